"""tests/README.md's guarantee → tests table stays true to README.md and to the test files.

Every numbered guarantee under README.md's "Guarantees" heading needs at least one row; every
row's number must be one of them; every test a row names (``tier/file.py::function``) must be a
module-level test function of that file, found by parsing it (nothing is imported or run).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TABLE = ROOT / "tests" / "README.md"
_ROW = re.compile(r"^\| *(\d+) *\|(.*)\| *`([^`]+)` *\|$", re.M)


def guarantees(readme: str) -> dict[int, str]:
    """Number -> bold title of each numbered item in the README's Guarantees section."""
    section = readme.split("\n## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    return {int(n): title for n, title in re.findall(r"^(\d+)\. \*\*(.+?)\*\*", section, re.M)}


def rows(table: str) -> list[tuple[int, str]]:
    """(guarantee number, ``tier/file.py::function``) of every row of the table."""
    return [(int(number), test.strip()) for number, _, test in _ROW.findall(table)]


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def missing_tests(table_rows: list[tuple[int, str]], tests_dir: Path) -> list[str]:
    """The rows' tests that do not exist (a file missing, or no such function in it)."""
    missing = []
    for _, test in table_rows:
        file, sep, function = test.partition("::")
        path = tests_dir / file
        if not sep or not path.is_file() or function not in defined_tests(path):
            missing.append(test)
    return missing


def test_every_guarantee_has_a_row_and_every_row_a_guarantee() -> None:
    numbered = guarantees(README.read_text())
    assert sorted(numbered) == list(range(1, len(numbered) + 1)) and len(numbered) >= 7, numbered
    covered = {number for number, _ in rows(TABLE.read_text())}
    assert sorted(set(numbered) - covered) == [], "guarantees without a test in tests/README.md"
    assert sorted(covered - set(numbered)) == [], "rows naming a guarantee README.md lacks"


def test_every_test_the_table_names_exists() -> None:
    table_rows = rows(TABLE.read_text())
    table_lines = [line for line in TABLE.read_text().splitlines() if re.match(r"^\| *\d", line)]
    assert len(table_rows) == len(table_lines), "a row the parser cannot read"
    assert missing_tests(table_rows, ROOT / "tests") == []


def test_the_checks_fail_on_a_missing_guarantee_or_test(tmp_path: Path) -> None:
    """The checks above can fail: an unknown function, an unknown file, a row-less guarantee."""
    (tmp_path / "unit").mkdir()
    (tmp_path / "unit" / "test_x.py").write_text("def test_here():\n    pass\n")
    table = (
        "| 1 | a | `unit/test_x.py::test_here` |\n"
        "| 1 | b | `unit/test_x.py::test_gone` |\n"
        "| 2 | c | `unit/test_nowhere.py::test_here` |\n"
    )
    assert missing_tests(rows(table), tmp_path) == [
        "unit/test_x.py::test_gone",
        "unit/test_nowhere.py::test_here",
    ]
    readme = "x\n## Guarantees\n\n1. **One.** a\n2. **Two.** b\n3. **Three.** c\n\n## Next\n"
    assert guarantees(readme) == {1: "One.", 2: "Two.", 3: "Three."}
    assert set(guarantees(readme)) - {n for n, _ in rows(table)} == {3}
