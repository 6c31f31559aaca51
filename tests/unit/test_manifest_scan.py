"""A catching-up server's scan and read-back (snapshot/scan.py, snapshot/readers.py) on an
in-memory partition: the deltas a hint jumped over are scanned after the base on a deadline
of their own (``ManifestScan.renew``); each snapshot's read-back gets 30 s plus 1 s per 8 MB,
reads a base lane base's chunks on its own partition from its first chunk and no further
than its reach; the scan's reader fetches small and the chunk readers large."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from streamtrain.kafka import ReadTimeout
from streamtrain.snapshot import readers as readers_module
from streamtrain.snapshot import scan as scan_module
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest, SnapshotOrder
from streamtrain.snapshot.readers import SnapshotReaders
from streamtrain.snapshot.scan import Candidate, ManifestScan, catch_up_reads, read_chunks
from streamtrain.snapshot.spool import Spool
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot
from tests.manifest_fixtures import placeholder_manifest


@dataclasses.dataclass(frozen=True)
class _Record:
    offset: int
    value: bytes
    headers: Sequence[tuple[str, bytes]]
    topic: str = "t"
    partition: int = 0
    timestamp: int = -1
    key: bytes | None = None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Partition:
    """A partition's records in memory; a read past its deadline times out, as the real
    reader's does."""

    def __init__(self, clock: _Clock, partition: int = 0) -> None:
        self.records: list[_Record] = []
        self.clock, self.partition, self.topic = clock, partition, "t"
        self.reads: list[tuple[int, int, float]] = []  # (start, end, seconds left)

    def append(self, value: bytes, headers: Sequence[tuple[str, bytes]]) -> int:
        self.records.append(_Record(len(self.records), value, headers, partition=self.partition))
        return len(self.records) - 1

    def low(self) -> int:
        return 0

    def bounds(self, deadline: float) -> tuple[int, int]:
        return 0, len(self.records)

    def read(self, start: int, end: int, deadline: float) -> Iterator[_Record]:
        self.reads.append((start, end, deadline - self.clock()))
        if self.clock() >= deadline:
            raise ReadTimeout("past the deadline")
        yield from self.records[start:end]


def _manifest(partition: _Partition, manifest: SnapshotManifest) -> int:
    headers = wire.manifest_headers("m", manifest.snapshot_id)
    return partition.append(manifest.model_dump_json().encode(), headers)


def _chunk(partition: _Partition, snapshot_id: str) -> int:
    return partition.append(b"x" * 8, wire.chunk_headers("m", snapshot_id, 0, 1))


def _screen(record: Any, header: wire.RecordHeader) -> Candidate | RejectedSnapshot:
    manifest = SnapshotManifest.model_validate_json(record.value)
    return Candidate(manifest, record.offset, record.value, None)


def _topic(clock: _Clock) -> tuple[_Partition, SnapshotManifest]:
    """An older base 1 and delta 2; base 3 (many chunks); deltas 4..9 naming base 3 by
    offset. Returns the partition and base 3's manifest."""
    topic = _Partition(clock)
    for version in (1, 3):
        first = _chunk(topic, f"run/{version}")
        for _ in range(5):
            _chunk(topic, f"run/{version}")
        base = placeholder_manifest("run", version).model_copy(update={"first_chunk_offset": first})
        at = _manifest(topic, base)
        if version == 1:
            _chunk(topic, "run/2")
            _manifest(topic, _delta(2, 1, at))
    for version in range(4, 10):
        _chunk(topic, f"run/{version}")
        _manifest(topic, _delta(version, 3, at))
    return topic, base


def _delta(version: int, base: int, base_at: int) -> SnapshotManifest:
    manifest = placeholder_manifest(
        "run", version, kind="delta", base_id=f"run/{base}", predecessor_id=f"run/{version - 1}"
    )
    return manifest.model_copy(update={"base_offset": base_at})


def test_the_deltas_a_hint_jumped_over_are_read_forward_after_the_base_on_a_fresh_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(scan_module.time, "monotonic", clock)
    topic, base = _topic(clock)
    scan = ManifestScan(topic, 0, len(topic.records), clock() + 60, _screen, lambda r: None)
    live: list[SnapshotOrder] = []
    read: list[int] = []

    def wanted(order: SnapshotOrder) -> bool:
        return not live or order > live[-1]

    def reading(plan: list[Candidate]) -> Iterator[ReceivedSnapshot]:
        for candidate in plan:
            if not wanted(candidate.manifest.order):
                continue
            read.append(candidate.manifest.version)
            if candidate.manifest.kind == "base":
                clock.now += 61  # a 1 GB base's read used the whole first deadline
                live.append(candidate.manifest.order)
        yield from ()

    def reading_after(span: tuple[int, int, float]) -> Iterator[ReceivedSnapshot]:
        start, end, deadline = span
        for record in topic.read(start, end, deadline):
            header = wire.parse_headers(record.headers)
            if header is not None and header.kind == "manifest" and wanted(_order(record)):
                read.append(int(header.snapshot_id.split("/")[1]))
        yield from ()

    assert list(catch_up_reads(scan, wanted, reading, reading_after)) == []
    # the newest delta, then the base it names; after the base, the deltas the jump passed
    # over and the newest, oldest first: read forward in one pass from the base's manifest
    # to the scan's end, on the renewed deadline (not cut short)
    assert read == [3, 4, 5, 6, 7, 8, 9]
    assert topic.reads[1][0] == base.first_chunk_offset + 6  # the hint's one-record read
    forward = [r for r in topic.reads if r[1] == len(topic.records)][-1]
    assert forward[:2] == (base.first_chunk_offset + 7, len(topic.records)) and forward[2] > 0
    # four reads in all: the newest window, the hint's record, the window before the base
    # (the snapshot just before it) and the forward pass; none for each delta
    assert len(topic.reads) == 4 and topic.reads[-1] == forward, topic.reads
    # nothing older than the base was read: the base is live, the older ones not wanted
    assert all(start >= base.first_chunk_offset - 2 for start, _, _ in topic.reads[1:])


def _order(record: Any) -> SnapshotOrder:
    return SnapshotManifest.model_validate_json(record.value).order


def _read(partition: _Partition, candidate: Candidate) -> int:
    """``read_chunks`` from ``partition``; how many chunks it kept."""
    spool = Spool(max_bytes=10**6)
    try:
        read_chunks(partition, candidate, spool, 10)  # type: ignore[arg-type]
        return len(spool)
    finally:
        spool.close()


def test_a_read_back_gets_30_s_plus_1_s_per_8_mb(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(scan_module.time, "monotonic", clock)
    topic = _Partition(clock)
    first = _chunk(topic, "run/1")
    big = placeholder_manifest("run", 1).model_copy(
        update={"size_bytes": 10**9, "first_chunk_offset": first}
    )
    at = _manifest(topic, big)
    _read(topic, Candidate(big, at, b"", None))
    (start, end, left) = topic.reads[-1]
    assert (start, end) == (first, at)
    assert left == 30 + 10**9 / 8e6  # 155 s for 1 GB


def test_a_base_partition_read_starts_at_the_first_chunk_and_stops_at_its_reach() -> None:
    clock = _Clock()
    bases = _Partition(clock, partition=1)
    for version in range(1, 60):  # many bases' chunks after it, one record each
        _chunk(bases, f"run/{version}")
    manifest = placeholder_manifest("run", 5).model_copy(
        update={"first_chunk_offset": 4, "chunk_partition": 1}
    )
    assert _read(bases, Candidate(manifest, 1234, b"", None)) == 1  # its own chunk only
    start, end, _ = bases.reads[-1]
    assert (start, end) == (4, 4 + 2 * manifest.chunk_count + 16)
    # a partition shorter than the reach: read to its end, never to the manifest's offset
    short = _Partition(clock, partition=1)
    for version in range(1, 7):
        _chunk(short, f"run/{version}")
    _read(short, Candidate(manifest, 1234, b"", None))
    assert short.reads[-1][:2] == (4, 6)


def test_the_scan_reader_fetches_small_and_the_chunk_readers_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[dict[str, Any]] = []
    partitions = (0, 1)

    class _Reader:
        def partitions(self) -> tuple[int, ...]:
            return partitions

    def partition_reader(kafka: Any, **options: Any) -> _Reader:
        made.append(options)
        return _Reader()

    monkeypatch.setattr(readers_module, "partition_reader", partition_reader)
    readers = SnapshotReaders(kafka=None, topic="t", fetch_max_wait_ms=10)  # type: ignore[arg-type]
    assert readers.scan is readers.scan  # made once
    _ = readers.tail, readers.reader, readers.chunks(None), readers.chunks(1)
    by_role = [(o["partition"], o["fetch_bytes"], o["queued_bytes"]) for o in made]
    # scan; tail; the random reader (also the chunks beside their manifest); partition 1:
    # the chunk readers fetch 4 MiB a round trip and read at most 8 MiB ahead (issue 26)
    chunk = (4 * 1024**2, 8 * 1024**2)
    assert by_role == [(0, 64 * 1024, 1024**2), (0, *chunk), (0, *chunk), (1, *chunk)]
    # a manifest naming a partition the topic lacks: its chunks cannot be read (incomplete)
    partitions = (0,)
    with pytest.raises(ReadTimeout, match="has no partition 1"):
        readers.chunks(1)
