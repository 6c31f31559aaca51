"""ReadPace: a bulk read pauses only while the broker answers later than its lowest latency
by more than the target, and then for about the excess (kafka/read_pace.py, issue 26)."""

from __future__ import annotations

import pytest

from streamtrain.kafka.read_pace import ReadPace


def test_an_idle_broker_costs_nothing() -> None:
    pace = ReadPace(target_s=0.05)
    # waits around an idle broker's latency (its own fetch included), some jitter
    waits = [0.012, 0.015, 0.011, 0.03, 0.014, 0.05, 0.012] * 20
    assert [pace.observe(w) for w in waits] == [0.0] * len(waits)
    assert pace.pauses == 0 and pace.paused_s == 0.0
    assert pace.lowest_s == pytest.approx(0.011)


def test_records_fetched_ahead_are_not_a_wait() -> None:
    pace = ReadPace(target_s=0.0, smoothing=1.0)
    assert pace.observe(0.02) == 0.0
    assert pace.observe(0.0001) == 0.0  # from the client's read-ahead: no latency seen
    assert pace.lowest_s == pytest.approx(0.02), "the lowest is of real waits only"


def test_a_slow_broker_is_given_back_the_excess() -> None:
    pace = ReadPace(target_s=0.05, max_pause_s=0.5, smoothing=1.0)
    assert pace.observe(0.01) == 0.0
    assert pace.observe(0.05) == 0.0  # 40 ms above the lowest: within the target
    assert pace.observe(0.31) == pytest.approx(0.30)  # 300 ms late: pause 300 ms
    assert pace.observe(2.0) == pytest.approx(0.5), "one pause is bounded"
    assert pace.pauses == 2 and pace.paused_s == pytest.approx(0.8)
    assert pace.observe(0.012) == 0.0, "the broker answers on time again: no pause"


def test_one_late_fetch_alone_pauses_little() -> None:
    pace = ReadPace(target_s=0.05, smoothing=0.25)
    pace.observe(0.01)
    assert pace.observe(0.19) == 0.0  # 180 ms late once: a quarter of it, under the target
    assert pace.excess_s == pytest.approx(0.045)
    assert pace.observe(0.01) == 0.0
    assert pace.observe(0.29) == pytest.approx(0.0953125), "late again: the smoothed excess"


@pytest.mark.parametrize(
    "bad", [{"target_s": -1.0}, {"max_pause_s": -0.1}, {"smoothing": 0.0}, {"smoothing": 1.5}]
)
def test_nonsense_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="ReadPace needs"):
        ReadPace(**bad)
