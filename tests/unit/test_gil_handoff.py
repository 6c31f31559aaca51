"""The short GIL switch interval while a whole snapshot is written (``snapshot/gil_handoff.py``,
issue 26): shortened inside, put back after the last of overlapping holders leaves, never
lengthened."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from streamtrain.snapshot.gil_handoff import HANDOFF_S, short_switch_interval


@pytest.fixture
def default_interval() -> Iterator[float]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


def test_inside_the_interval_is_short_and_after_it_is_put_back(default_interval: float) -> None:
    with short_switch_interval():
        assert sys.getswitchinterval() == pytest.approx(HANDOFF_S, abs=2e-6)
    assert sys.getswitchinterval() == pytest.approx(default_interval, abs=2e-6)


def test_overlapping_holders_keep_it_short_until_the_last_leaves(default_interval: float) -> None:
    first, second = short_switch_interval(), short_switch_interval()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the lanes' writes end in any order
    assert sys.getswitchinterval() == pytest.approx(HANDOFF_S, abs=2e-6)
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(default_interval, abs=2e-6)


def test_a_shorter_interval_already_set_is_kept(default_interval: float) -> None:
    sys.setswitchinterval(0.0001)
    with short_switch_interval():
        assert sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)
    assert sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)


def test_an_error_inside_puts_the_interval_back(default_interval: float) -> None:
    with pytest.raises(RuntimeError), short_switch_interval():
        raise RuntimeError("a failed write")
    assert sys.getswitchinterval() == pytest.approx(default_interval, abs=2e-6)
