"""Records waiting but none delivered (streamtrain.ingest.starvation): gauge and log lines."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest

from streamtrain.ingest.starvation import StarvationWatch
from streamtrain.metrics import TRAINER_REGISTRY


def _exported() -> float:
    for line in generate_latest(TRAINER_REGISTRY).decode().splitlines():
        if line.startswith("streamtrain_ingest_starved_seconds "):
            return float(line.split()[1])
    raise AssertionError("streamtrain_ingest_starved_seconds is not exported")


def test_starved_seconds_grow_only_while_records_wait_undelivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    watch = StarvationWatch(warn_after_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="streamtrain.ingest.starvation")
    watch.observe(delivered=500, waiting=0)
    assert watch.starved_seconds == 0 and _exported() == 0
    for _ in range(25):  # 25 s of empty polls while 3,000 records sit in the log
        now[0] += 1.0
        watch.observe(delivered=0, waiting=3000)
    assert watch.starved_seconds == 24.0 and _exported() == 24.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # at 10 s and at 20 s
    assert warnings[0].startswith("records waiting but none delivered for 10 s: 3000 record(s)")
    assert "for 20 s" in warnings[1]
    now[0] += 1.0
    watch.observe(delivered=100, waiting=2900)
    assert watch.starved_seconds == 0 and _exported() == 0
    assert "delivered again after 25 s" in caplog.records[-1].getMessage()


def test_an_idle_caught_up_log_is_not_starvation(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    watch = StarvationWatch(warn_after_s=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="streamtrain.ingest.starvation")
    for _ in range(60):
        now[0] += 1.0
        watch.observe(delivered=0, waiting=0)
    assert watch.starved_seconds == 0 and _exported() == 0
    assert not caplog.records


def test_warn_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="warn_after_s must be > 0"):
        StarvationWatch(warn_after_s=0)
