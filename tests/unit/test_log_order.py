"""When a batch may be cut: full, caught up past the deadline, or after a counted stall."""

from __future__ import annotations

import logging
from typing import NamedTuple

import pytest

from streamtrain import metrics
from streamtrain.ingest.buffer import BatchBuffer
from streamtrain.ingest.decode import DecodedChunk, decode_records
from streamtrain.ingest.log_order import LogOrder
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import encode_json

SPEC = SampleSpec(feature_shape=(2,), task="multiclass", num_classes=5)


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _poll(partition: int, first: int, count: int) -> DecodedChunk:
    records = [
        Rec("t", partition, o, 1_000 + o, None, encode_json([partition, o], 0), [])
        for o in range(first, first + count)
    ]
    return decode_records(SPEC, records, 1024)


def _expired(partition: int) -> float:
    value = metrics.TRAINER_REGISTRY.get_sample_value(
        "streamtrain_ingest_partition_waits_expired_total", {"partition": str(partition)}
    )
    return value or 0.0


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_caught_up_stream_is_cut_at_the_deadline() -> None:
    order, buffer = LogOrder(1000, _Clock()), BatchBuffer()
    assert not order.feed(_poll(0, 0, 3), buffer, set, deadline_passed=False, max_samples=8)
    assert order.feed(None, buffer, set, deadline_passed=True, max_samples=8)
    assert buffer.samples == 3


def test_a_backlog_is_never_cut_partial_on_the_deadline() -> None:
    clock = _Clock()
    order, buffer = LogOrder(1000, clock), BatchBuffer()
    behind = {0}
    assert not order.feed(_poll(0, 0, 3), buffer, lambda: behind, True, max_samples=8)
    clock.now += 0.5
    assert not order.feed(_poll(0, 3, 3), buffer, lambda: behind, True, max_samples=8)
    assert order.feed(_poll(0, 6, 3), buffer, lambda: behind, True, max_samples=8)
    assert buffer.samples == 9  # full: the cut takes 8, the rest waits for the next batch


def test_a_stalled_partition_is_given_up_on_counted_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    order, buffer = LogOrder(1000, clock), BatchBuffer()
    before = _expired(1)
    behind = {1}  # partition 1 has unfetched records that never arrive
    caplog.set_level(logging.WARNING, logger="streamtrain.ingest.log_order")
    assert not order.feed(_poll(0, 0, 3), buffer, lambda: behind, True, max_samples=8)
    clock.now += 0.99
    assert not order.feed(None, buffer, lambda: behind, True, max_samples=8)
    clock.now += 0.01
    assert order.feed(None, buffer, lambda: behind, True, max_samples=8)
    assert buffer.samples == 3 and _expired(1) == before + 1
    assert len(caplog.records) == 1 and "ingest.max_partition_idle_ms" in caplog.text
    # A second stall within the minute is counted but not logged again.
    buffer.cut(8)
    assert not order.feed(_poll(0, 3, 2), buffer, lambda: behind, True, max_samples=8)
    clock.now += 1.0
    assert order.feed(None, buffer, lambda: behind, True, max_samples=8)
    assert _expired(1) == before + 2 and len(caplog.records) == 1
    clock.now += 60.0
    assert not order.feed(_poll(0, 5, 1), buffer, lambda: behind, True, max_samples=8)
    clock.now += 1.0
    assert order.feed(None, buffer, lambda: behind, True, max_samples=8)
    assert len(caplog.records) == 2 and "(2 such waits" in caplog.records[1].getMessage()
