"""The partition merge releases one order that depends on the log alone, never on fetches."""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np

from streamtrain.ingest.decode import DecodedChunk, decode_records
from streamtrain.ingest.partition_merge import PartitionMerge, _key_order
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


Log = dict[int, list[Rec]]


def _log(rng: random.Random, partitions: int, length: int) -> Log:
    """Records whose timestamps go backwards now and then, with a reject every so often."""
    log: Log = {}
    for p in range(partitions):
        records = []
        for offset in range(rng.randint(0, length)):
            stamp = 1_000 + rng.randint(0, 40)
            value = b"not json" if rng.random() < 0.1 else encode_json([p, offset], p)
            records.append(Rec("t", p, offset, stamp, None, value, []))
        log[p] = records
    return log


def _reference(log: Log, start: dict[int, int]) -> list[tuple[int, int]]:
    """The k-way merge the module promises: always take the head with the smallest key."""
    at = dict(start)
    out = []
    while True:
        heads = [
            (r.timestamp, p, r.offset)
            for p, rs in log.items()
            if at[p] < len(rs)
            for r in [rs[at[p]]]
        ]
        if not heads:
            return out
        _, p, offset = min(heads)
        out.append((p, offset))
        at[p] += 1


def _released(chunk: DecodedChunk | None) -> list[tuple[int, int]]:
    if chunk is None:
        return []
    return list(zip(chunk.partitions.tolist(), chunk.offsets.tolist(), strict=True))


def _merge_with_random_fetches(
    log: Log, start: dict[int, int], rng: random.Random
) -> tuple[list[tuple[int, int]], list[DecodedChunk]]:
    """Fetch each partition in random slices in a random interleaving, releasing as we go."""
    merge = PartitionMerge(max_idle_s=3600.0, clock=lambda: 0.0)
    at = dict(start)
    order: list[tuple[int, int]] = []
    chunks: list[DecodedChunk] = []
    while True:
        pending = [p for p in log if at[p] < len(log[p])]
        if pending:
            polled: list[Rec] = []
            for p in rng.sample(pending, rng.randint(1, len(pending))):
                take = rng.randint(1, 7)
                polled.extend(log[p][at[p] : at[p] + take])
                at[p] += take
            merge.add(decode_records(SPEC, polled, 1024))
        unfinished = {p for p in log if at[p] < len(log[p])}
        released = merge.release(unfinished)
        assert released.gave_up == ()
        order += _released(released.chunk)
        if released.chunk is not None:
            chunks.append(released.chunk)
        if not pending:
            assert merge.records == 0
            return order, chunks


def test_release_order_is_the_log_merge_for_any_fetch_pattern_and_any_resume_point() -> None:
    rng = random.Random(5)
    for _ in range(150):
        log = _log(rng, partitions=rng.randint(1, 4), length=25)
        start = dict.fromkeys(log, 0)
        expected = _reference(log, start)
        order, _ = _merge_with_random_fetches(log, start, rng)
        assert order == expected
        # Resume after any prefix (a checkpoint position): the rest is the same.
        cut = rng.randint(0, len(expected))
        resume = dict(start)
        for p, offset in expected[:cut]:
            resume[p] = offset + 1
        order, _ = _merge_with_random_fetches(log, resume, rng)
        assert order == expected[cut:]


def test_samples_and_rejects_travel_with_their_records() -> None:
    rng = random.Random(9)
    log = _log(rng, partitions=3, length=40)
    _, chunks = _merge_with_random_fetches(log, dict.fromkeys(log, 0), rng)
    for chunk in chunks:
        rows = chunk.decoded.rows.tolist()
        for sample, row in enumerate(rows):
            p, offset = int(chunk.partitions[row]), int(chunk.offsets[row])
            assert chunk.decoded.features[sample].tolist() == [p, offset]
            assert chunk.records[row].offset == offset and chunk.records[row].partition == p
        for row, reject in chunk.decoded.rejects.items():
            assert chunk.records[row].value == b"not json", reject
        assert set(rows).isdisjoint(chunk.decoded.rejects)
        assert len(rows) + len(chunk.decoded.rejects) == len(chunk.offsets)


def test_a_single_partition_passes_through_untouched() -> None:
    merge = PartitionMerge(max_idle_s=1.0)
    records = [Rec("t", 0, i, 2_000 - i, None, encode_json([0, i], 0), []) for i in range(5)]
    chunk = decode_records(SPEC, records, 1024)
    merge.add(chunk)
    released = merge.release(unfinished={0})
    assert released.chunk is not None and released.chunk.decoded is chunk.decoded
    assert _released(released.chunk) == [(0, i) for i in range(5)]


def test_a_lagging_partition_is_waited_for_then_given_up_on() -> None:
    now = [0.0]
    merge = PartitionMerge(max_idle_s=0.5, clock=lambda: now[0])
    records = [Rec("t", 0, i, 1_000 + i, None, encode_json([0, i], 0), []) for i in range(3)]
    merge.add(decode_records(SPEC, records, 1024))
    assert merge.release(unfinished={0, 1}).chunk is None, "partition 1 may hold earlier records"
    now[0] = 0.4
    assert merge.release(unfinished={0, 1}).chunk is None
    now[0] = 0.5
    released = merge.release(unfinished={0, 1})
    assert released.gave_up == (1,) and len(_released(released.chunk)) == 3
    # Partition 1 caught up: it bounds nothing and nothing waits.
    merge.add(decode_records(SPEC, [Rec("t", 0, 3, 1_003, None, b"x", [])], 1024))
    released = merge.release(unfinished={0})
    assert released.gave_up == () and _released(released.chunk) == [(0, 3)]


def test_a_quiet_partition_whose_records_would_sort_later_blocks_nothing() -> None:
    now = [0.0]
    merge = PartitionMerge(max_idle_s=0.5, clock=lambda: now[0])
    first = [Rec("t", 1, 0, 5_000, None, encode_json([1, 0], 1), [])]
    merge.add(decode_records(SPEC, first, 1024))
    merge.release(unfinished={0, 1}, force=True)  # partition 1 seen up to t=5000
    early = [Rec("t", 0, i, 1_000 + i, None, encode_json([0, i], 0), []) for i in range(2)]
    merge.add(decode_records(SPEC, early, 1024))
    released = merge.release(unfinished={0, 1})
    assert released.gave_up == () and _released(released.chunk) == [(0, 0), (0, 1)]


def test_drop_partitions_forgets_held_records_and_history() -> None:
    merge = PartitionMerge(max_idle_s=1.0)
    records = [Rec("t", p, 0, 1_000, None, encode_json([p, 0], p), []) for p in (0, 1)]
    merge.add(decode_records(SPEC, records, 1024))
    merge.drop_partitions([0])
    assert merge.records == 1
    released = merge.release(unfinished=set())
    assert _released(released.chunk) == [(1, 0)]
    assert np.array_equal(released.chunk.decoded.features, [[1.0, 0.0]])  # type: ignore[union-attr]


def test_the_combined_key_sort_is_the_three_key_lexsort() -> None:
    """_key_order's one stable argsort gives lexsort's (key, partition, offset) order for
    records held in offset order per partition, across key spans that fit and that do not
    (the lexsort fallback), negative keys (no timestamp) included."""
    rng = np.random.default_rng(3)
    for span in (1, 50, 1 << 40, 1 << 62):
        n = 3000
        parts = rng.choice(np.array([0, 4, 7]), n)
        offsets = np.empty(n, np.int64)
        keys = np.empty(n, np.int64)
        for p in (0, 4, 7):
            mine = parts == p
            offsets[mine] = np.arange(mine.sum()) + 10 * p
            steps = rng.integers(0, max(2, span // n), mine.sum())
            keys[mine] = np.maximum.accumulate(steps.cumsum() - 1)
        expected = np.lexsort((offsets, parts, keys))
        np.testing.assert_array_equal(_key_order(keys, parts, offsets), expected)
