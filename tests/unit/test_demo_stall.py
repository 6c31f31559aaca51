"""The demo's live rate and its stall report (streamtrain.demo.stall)."""

from __future__ import annotations

from streamtrain.demo.stall import RateMeter, StallWatch


def test_rate_falls_to_zero_when_the_counter_stops() -> None:
    meter = RateMeter(window_s=2.0)
    assert meter.rate is None
    for t in range(5):
        meter.observe(t * 0.5, 1000.0 * t)  # 2,000 samples/s
    assert meter.rate == 2000.0
    for t in range(5, 12):
        meter.observe(t * 0.5, 4000.0)  # nothing learned from t=2 s on
    assert meter.rate == 0.0


def test_stall_needs_waiting_records_and_no_intake() -> None:
    watch = StallWatch(min_seconds=5.0, max_age_s=5.0)
    for t in range(30):
        # idle and caught up from t=10: no intake, but nothing waits either
        watch.observe(float(t), 100.0 * min(t, 10), lag=0.0, data_age=0.5)
    assert watch.healthy and watch.lines("b.log") == []


def test_a_stall_and_stale_weights_are_reported_with_their_length() -> None:
    watch = StallWatch(min_seconds=5.0, max_age_s=5.0)
    for t in range(40):
        trained = 100.0 * min(t, 10)
        lag = 2000.0 * max(0, t - 10)
        age = max(0.5, t - 10.0)
        watch.observe(float(t), trained, lag=lag, data_age=age)
    assert not watch.healthy
    lines = watch.lines("run/broker.log")
    assert lines[0] == (
        "training stalled for 29 s (t=10-39 s) while 58,000 records waited; see run/broker.log"
    )
    assert lines[1] == "served data older than 5 s for 23 s (t=16-39 s, up to 29 s)"


def test_a_short_hiccup_is_not_a_stall() -> None:
    watch = StallWatch(min_seconds=5.0, max_age_s=5.0)
    trained = 0.0
    for t in range(40):
        if not 10 <= t < 13:  # 3 s without a step
            trained += 100.0
        watch.observe(float(t), trained, lag=500.0, data_age=1.0)
    assert watch.healthy


def test_old_data_at_start_is_not_staleness() -> None:
    watch = StallWatch(min_seconds=5.0, max_age_s=5.0)
    for t in range(20):  # a slow start serves a backlog: 20 s old data, then fresh
        watch.observe(float(t), 100.0 * t, lag=0.0, data_age=20.0 if t < 10 else 1.0)
    assert watch.healthy
    for t in range(20, 40):  # then it falls behind
        watch.observe(float(t), 100.0 * t, lag=0.0, data_age=float(t - 18))
    assert watch.lines("b.log") == ["served data older than 5 s for 15 s (t=24-39 s, up to 21 s)"]
