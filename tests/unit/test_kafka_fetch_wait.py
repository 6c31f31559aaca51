"""kafka.fetch_wait.FetchWaitTuner: it widens the wait once, on a trickle out of waiting records."""

from __future__ import annotations

import pytest

from streamtrain.kafka.fetch_wait import FetchWaitTuner


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _tuner(clock: _Clock, widened: list[int]) -> FetchWaitTuner:
    return FetchWaitTuner(10, widened.append, clock=clock)


def _polls(tuner: FetchWaitTuner, clock: _Clock, delivered: int, waiting: int, n: int) -> None:
    for _ in range(n):  # a poll every 50 ms
        tuner.observe(delivered, waiting)
        clock.now += 0.05


def test_a_trickle_out_of_a_backlog_widens_the_wait_once(caplog: pytest.LogCaptureFixture) -> None:
    clock, widened = _Clock(), []
    tuner = _tuner(clock, widened)
    _polls(tuner, clock, delivered=1, waiting=40_000, n=30)  # 1.5 s: not yet a whole window
    assert widened == []
    _polls(tuner, clock, delivered=1, waiting=40_000, n=20)
    assert widened == [250] and tuner.widened and tuner.fetch_max_wait_ms == 250
    assert "raised from 10 to 250 ms" in caplog.text
    _polls(tuner, clock, delivered=0, waiting=40_000, n=200)
    assert widened == [250]


@pytest.mark.parametrize(
    ("delivered", "waiting", "why"),
    [
        (4096, 200_000, "a slow trainer replaying a backlog: every poll is a full batch"),
        (10, 20, "a small backlog delivered as it comes (a tail that keeps up)"),
        (0, 0, "caught up: idle fetches are not a trickle"),
    ],
)
def test_no_widening_without_a_trickle(delivered: int, waiting: int, why: str) -> None:
    clock, widened = _Clock(), []
    _polls(_tuner(clock, widened), clock, delivered, waiting, n=400)
    assert widened == [], why


def test_a_few_records_waiting_with_none_delivered_widen_the_wait() -> None:
    """A server's tail at the end of a long partition: one delta waits, no fetch returns it."""
    clock, widened = _Clock(), []
    _polls(_tuner(clock, widened), clock, delivered=0, waiting=2, n=50)
    assert widened == [250]


def test_a_backlog_that_drains_restarts_the_window() -> None:
    clock, widened = _Clock(), []
    tuner = _tuner(clock, widened)
    for _ in range(10):  # 1.5 s of trickle, then caught up once: never a whole window
        _polls(tuner, clock, delivered=1, waiting=5_000, n=30)
        tuner.observe(5_000, 0)
    assert widened == []


def test_already_wide_is_left_alone() -> None:
    clock, widened = _Clock(), []
    tuner = FetchWaitTuner(500, widened.append, clock=clock)
    _polls(tuner, clock, delivered=0, waiting=40_000, n=100)
    assert widened == [] and tuner.fetch_max_wait_ms == 500


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s and trickle_records"):
        FetchWaitTuner(10, print, window_s=0)
