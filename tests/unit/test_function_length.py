"""No function in ``streamtrain/`` is longer than 80 lines (STYLE.md: small functions, each a
step with a name; a long one is split into named steps, not wrapped).

A function's length runs from its ``def`` line to its last line, docstring and comments
included (decorators not), nested functions counted in their own right and inside their
parent. Read from the source with ``ast``, like ``test_import_graph.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "streamtrain"
MAX_LINES = 80


def _function_lengths(path: Path) -> Iterator[tuple[str, int]]:
    """``(qualified name, lines)`` for every function and method in ``path``."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                yield name, child.end_lineno - child.lineno + 1
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text(), str(path)), "")


def test_the_measure_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"        x = {i}" for i in range(MAX_LINES))
    source = tmp_path / "long.py"
    source.write_text(
        f"class C:\n    def long(self) -> None:\n{body}\n\n\ndef short() -> None:\n    pass\n"
    )
    assert dict(_function_lengths(source)) == {"C.long": MAX_LINES + 1, "short": 2}


def test_no_function_in_streamtrain_is_over_80_lines() -> None:
    too_long = [
        f"{path.relative_to(PACKAGE.parent)}: {name} ({lines} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, lines in _function_lengths(path)
        if lines > MAX_LINES
    ]
    assert not too_long, (
        f"functions over {MAX_LINES} lines (split each into named steps): " + "; ".join(too_long)
    )
