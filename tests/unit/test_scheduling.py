"""tests/scheduling.py: the xdist work units and their order (`make test`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.scheduling import LONG_MODULES, SECOND_CLIENT, _second_client_half, longest_first

TESTS = Path(__file__).resolve().parents[1]


@dataclass
class _Item:
    path: Path
    name: str


def test_every_listed_long_module_exists() -> None:
    missing = [name for name in LONG_MODULES if not (TESTS / name).is_file()]
    assert not missing, f"tests/scheduling.py lists modules that are gone: {missing}"
    assert len(set(LONG_MODULES)) == len(LONG_MODULES)


def test_only_the_second_library_half_is_split_off() -> None:
    base = "tests/integration/test_x.py::test_y"
    assert _second_client_half(f"{base}[{SECOND_CLIENT}]")
    assert _second_client_half(f"{base}[3-5-{SECOND_CLIENT}]")
    assert not _second_client_half(f"{base}[confluent]")
    assert not _second_client_half(base)


def test_listed_modules_go_first_then_the_larger_and_a_modules_order_is_kept() -> None:
    small, large = TESTS / "unit" / "test_small.py", TESTS / "unit" / "test_large.py"
    listed = TESTS / LONG_MODULES[0]
    items = [
        _Item(small, "s1"),
        _Item(large, "l1"),
        _Item(large, "l2"),
        _Item(listed, "x1"),
        _Item(listed, "x2"),
    ]
    longest_first(items)  # type: ignore[arg-type]
    assert [item.name for item in items] == ["x1", "x2", "l1", "l2", "s1"]
