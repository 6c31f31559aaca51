"""Rejected records are loud: a rate-limited WARNING summary and the readiness condition
``samples`` (``ingest/reject_report.py``), driven by an injected clock."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from streamtrain import metrics
from streamtrain.ingest.reject_report import RejectReport
from streamtrain.train.throughput import ThroughputGauge
from streamtrain.wire import Reject


@dataclass
class Record:
    offset: int
    topic: str = "samples"
    partition: int = 0
    timestamp: int = -1
    key: bytes | None = None
    value: bytes | None = b"{}"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _report(clock: Clock, conditions: dict[str, tuple[bool, str]]) -> RejectReport:
    return RejectReport(
        "samples",
        every_s=30,
        alarm_after_s=60,
        clock=clock,
        condition=lambda name, ok, detail: conditions.update({name: (ok, detail)}),
    )


def _rejects(first: int, count: int, reason: str = "bad_shape") -> list[tuple[Record, Reject]]:
    detail = "features has shape [16], expected [8] (model.input_shape)"
    return [(Record(first + i), Reject(reason, detail)) for i in range(count)]  # type: ignore[arg-type]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_first_reject_is_summarised_at_once_then_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    clock, conditions = Clock(), {}
    report = _report(clock, conditions)
    report.add(_rejects(0, 3) + _rejects(3, 1, "non_finite"), records=6, samples=2)
    assert _warnings(caplog) == [
        "rejected 4 of 6 records from samples in the last 0 s (bad_shape 3, non_finite 1); "
        "e.g. samples/0/0: bad_shape: features has shape [16], expected [8] (model.input_shape)"
    ]
    clock.now += 10
    report.add(_rejects(6, 5), records=5, samples=0)
    report.tick()
    assert len(_warnings(caplog)) == 1, "rate-limited: nothing new before the interval"
    clock.now += 20
    report.tick()
    second = _warnings(caplog)[1]
    assert second.startswith("rejected 5 of 5 records from samples in the last 30 s (bad_shape 5)")
    assert "e.g. samples/0/6: bad_shape" in second, "the example is from the new interval"
    clock.now += 60
    report.tick()
    assert len(_warnings(caplog)) == 2, "no rejects since: no summary"


def test_close_summarises_what_is_left_and_no_rejects_say_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    clock, conditions = Clock(), {}
    quiet = _report(clock, conditions)
    quiet.add([], records=10, samples=10)
    quiet.close()
    assert _warnings(caplog) == []
    report = _report(clock, conditions)
    report.add(_rejects(0, 1), records=1, samples=0)
    report.add(_rejects(1, 2), records=2, samples=0)
    report.close()
    assert len(_warnings(caplog)) == 2
    assert _warnings(caplog)[1].startswith("rejected 2 of 2 records")


def test_readiness_fails_while_records_arrive_and_none_is_valid() -> None:
    clock, conditions = Clock(), {}
    report = _report(clock, conditions)
    assert conditions["samples"][0] is True
    report.add(_rejects(0, 4), records=4, samples=0)
    clock.now += 59
    report.add(_rejects(4, 4), records=4, samples=0)
    assert conditions["samples"][0] is True, "not before all_rejected_alarm_s"
    clock.now += 1
    report.tick()
    ok, detail = conditions["samples"]
    assert not ok
    assert "8 records from samples in 60 s and none valid" in detail, detail
    assert "bad_shape" in detail
    report.add([], records=1, samples=1)
    assert conditions["samples"][0] is True, "a valid sample clears it"
    report.add(_rejects(9, 1), records=1, samples=0)
    clock.now += 30
    report.tick()
    assert conditions["samples"][0] is True, "the clock starts again at the next reject"


def test_throughput_falls_to_zero_when_no_samples_come() -> None:
    clock = Clock()
    gauge = ThroughputGauge(clock, period=2.0)
    gauge.add(100)
    clock.now += 2
    gauge.add(100)
    assert _throughput() == pytest.approx(100.0)
    clock.now += 2
    gauge.add(0)  # an idle loop iteration
    assert _throughput() == 0.0


def _throughput() -> float | None:
    return metrics.TRAINER_REGISTRY.get_sample_value("streamtrain_train_samples_per_second")
