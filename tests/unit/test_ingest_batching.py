"""Decoding a poll's records and cutting exact batches from them; the batching policy."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from streamtrain.ingest.batch_deadline import MicroBatchPolicy
from streamtrain.ingest.buffer import BatchBuffer
from streamtrain.ingest.decode import decode_records
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import encode_binary, encode_json

SPEC = SampleSpec(feature_shape=(2,), task="multiclass", num_classes=5)
BIN_HEADER = [("content-type", b"application/x-streamtrain-sample")]


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _good(partition: int, offset: int, label: int, binary: bool = False) -> Rec:
    if binary:
        value, headers = encode_binary(SPEC, [label, 0.0], label), BIN_HEADER
    else:
        value, headers = encode_json([label, 0.0], label), []
    return Rec("t", partition, offset, 1_000_000 + offset, None, value, headers)


def _bad(partition: int, offset: int) -> Rec:
    return Rec("t", partition, offset, 0, b"k", b"garbage", [])


def test_decode_records_keeps_order_across_codecs_and_checks_headers_and_size() -> None:
    records = [
        _good(0, 0, 1),
        _good(0, 1, 2, binary=True),
        Rec("t", 0, 2, 0, None, b"{}", [("content-type", b"text/csv")]),
        Rec("t", 0, 3, 0, None, b"x" * 100, []),
        Rec("t", 0, 4, 0, None, None, []),
        _good(0, 5, 3),
        _good(0, 6, 4, binary=True),
    ]
    chunk = decode_records(SPEC, records, max_record_bytes=64)
    d = chunk.decoded
    assert chunk.sample_records.tolist() == [0, 1, 5, 6]
    assert d.labels.tolist() == [1, 2, 3, 4]
    assert d.features[:, 0].tolist() == [1, 2, 3, 4]
    assert d.timestamps.tolist() == [1000.0, 1000.001, 1000.005, 1000.006]
    assert {i: r.reason for i, r in d.rejects.items()} == {
        2: "unknown_content_type",
        3: "oversized",
        4: "undecodable",
    }
    assert "'text/csv' is neither" in d.rejects[2].detail
    assert "100 bytes, over the 64-byte limit (ingest.max_record_bytes)" in d.rejects[3].detail


def test_cut_is_exact_when_more_samples_than_the_batch_takes() -> None:
    buffer = BatchBuffer()
    # p0: good good bad good | p1: bad good good
    records = [_good(0, 10, 0), _good(0, 11, 1), _bad(0, 12), _good(0, 13, 2)]
    records += [_bad(1, 0), _good(1, 1, 3), _good(1, 2, 4)]
    buffer.add(decode_records(SPEC, records, 1024))
    assert (buffer.samples, buffer.records) == (5, 7)

    first, rejects = buffer.cut(2) or pytest.fail("empty")
    assert first.labels.tolist() == [0, 1]
    assert dict(first.next_offsets) == {0: 12}  # the bad record at 12 belongs to later batches
    assert first.records == 2 and rejects == []

    second, rejects = buffer.cut(2) or pytest.fail("empty")
    assert second.labels.tolist() == [2, 3]
    assert dict(second.next_offsets) == {0: 14, 1: 2}
    assert second.records == 4
    assert [(r.partition, r.offset, j.reason) for r, j in rejects] == [
        (0, 12, "undecodable"),
        (1, 0, "undecodable"),
    ]

    third, _ = buffer.cut(2) or pytest.fail("empty")
    assert third.labels.tolist() == [4] and dict(third.next_offsets) == {1: 3}
    assert buffer.cut(2) is None


def test_cut_across_chunks_and_trailing_rejects_when_not_full() -> None:
    buffer = BatchBuffer()
    buffer.add(decode_records(SPEC, [_good(0, 0, 1), _bad(0, 1)], 1024))
    buffer.add(decode_records(SPEC, [_good(0, 2, 2), _bad(0, 3), _bad(0, 4)], 1024))
    batch, rejects = buffer.cut(10) or pytest.fail("empty")
    assert batch.labels.tolist() == [1, 2]
    assert batch.features.shape == (2, 2) and batch.features.dtype == np.float32
    assert dict(batch.next_offsets) == {0: 5} and batch.records == 5 and len(rejects) == 3


def test_a_batch_of_only_rejects_still_moves_the_position() -> None:
    buffer = BatchBuffer()
    buffer.add(decode_records(SPEC, [_bad(2, 7), _bad(2, 8)], 1024))
    batch, rejects = buffer.cut(4) or pytest.fail("empty")
    assert batch.size == 0 and batch.records == 2 and dict(batch.next_offsets) == {2: 9}
    assert len(rejects) == 2


def test_drop_partitions_forgets_only_those_records() -> None:
    buffer = BatchBuffer()
    records = [_good(0, 0, 0), _good(1, 0, 1), _bad(1, 1), _good(0, 1, 2), _good(1, 2, 3)]
    buffer.add(decode_records(SPEC, records, 1024))
    first, _ = buffer.cut(1) or pytest.fail("empty")
    assert first.labels.tolist() == [0]
    buffer.drop_partitions([1])
    assert (buffer.samples, buffer.records) == (1, 1)
    rest, rejects = buffer.cut(10) or pytest.fail("empty")
    assert rest.labels.tolist() == [2] and dict(rest.next_offsets) == {0: 2} and rejects == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_policy_emits_at_size_or_after_wait_whichever_first() -> None:
    clock = FakeClock()
    policy = MicroBatchPolicy(max_batch_size=8, max_wait_ms=50, clock=clock)
    policy.start()
    assert not policy.due(7) and policy.due(8)
    assert policy.remaining_ms() == 50
    clock.now += 0.0201
    assert policy.remaining_ms() == 30 and not policy.expired()
    clock.now += 0.03
    assert policy.expired() and policy.due(0) and policy.remaining_ms() == 0
    policy.start()  # a new batch waits afresh
    assert not policy.due(0)


def test_policy_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        MicroBatchPolicy(0, 10)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0"):
        MicroBatchPolicy(1, -1)
