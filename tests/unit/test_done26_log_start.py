"""A snapshot partition whose log start is past 0 (issue 26, retention): Kafka's retention
deleted the oldest records, which no broker on this machine can do (the embedded Tansu never
deletes records: docs/snapshots.md, Retention), so the decisions are checked here on an
in-memory partition that behaves as a reader of such a log does (``auto.offset.reset``
earliest: a read from below the log start gets the records from the log start on).

A new replica's scan starts at the first stored offset and never reads below it; a delta
whose ``base_offset`` hint points below it is not followed; a base whose first chunks went
is read from the log start and found short (``incomplete``), never patched from elsewhere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamtrain.snapshot import scan as scan_module
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest, SnapshotOrder
from streamtrain.snapshot.payload import sha256_hex
from streamtrain.snapshot.scan import Candidate, ManifestScan, catch_up_reads, read_chunks
from streamtrain.snapshot.spool import Spool
from streamtrain.snapshot.verify import ReceivedSnapshot
from tests.manifest_fixtures import placeholder_manifest
from tests.unit.test_manifest_scan import (
    _chunk,
    _Clock,
    _delta,
    _manifest,
    _Partition,
    _Record,
    _screen,
)


class _Retained(_Partition):
    """A partition whose records before ``log_start`` were deleted by retention; ``asked``:
    where each read was asked to start (a reader below the log start is moved up to it)."""

    log_start = 0

    def __init__(self, clock: _Clock, partition: int = 0) -> None:
        super().__init__(clock, partition)
        self.asked: list[int] = []

    def low(self) -> int:
        return self.log_start

    def bounds(self, deadline: float) -> tuple[int, int]:
        return self.log_start, len(self.records)

    def read(self, start: int, end: int, deadline: float) -> Iterator[_Record]:
        self.asked.append(start)
        yield from super().read(max(start, self.log_start), end, deadline)


def _topic(clock: _Clock) -> tuple[_Retained, dict[int, int]]:
    """Base 1 (6 chunks), delta 2, base 3 (6 chunks), deltas 4..9 naming base 3 by offset;
    the partition and each version's manifest offset."""
    topic, at = _Retained(clock), {}
    for version in (1, 3):
        first = _chunk(topic, f"run/{version}")
        for _ in range(5):
            _chunk(topic, f"run/{version}")
        base = placeholder_manifest("run", version).model_copy(update={"first_chunk_offset": first})
        at[version] = _manifest(topic, base)
        if version == 1:
            _chunk(topic, "run/2")
            at[2] = _manifest(topic, _delta(2, 1, at[1]))
    for version in range(4, 10):
        _chunk(topic, f"run/{version}")
        at[version] = _manifest(topic, _delta(version, 3, at[3]))
    return topic, at


def _catch_up(topic: _Retained, clock: _Clock) -> list[int]:
    """The versions a catching-up server with nothing live reads, in order (bases make the
    later ones wanted only if newer, as the watcher's ``wanted`` does)."""
    low, high = topic.bounds(clock() + 60)
    scan = ManifestScan(topic, low, high, clock() + 60, _screen, lambda r: None)
    live: list[SnapshotOrder] = []
    read: list[int] = []

    def wanted(order: SnapshotOrder) -> bool:
        return not live or order > live[-1]

    def reading(plan: list[Candidate]) -> Iterator[ReceivedSnapshot]:
        for candidate in plan:
            if wanted(candidate.manifest.order):
                read.append(candidate.manifest.version)
                if candidate.manifest.kind == "base":
                    live.append(candidate.manifest.order)
        yield from ()

    def reading_after(span: tuple[int, int, float]) -> Iterator[ReceivedSnapshot]:
        for record in topic.read(*span):
            header = wire.parse_headers(record.headers)
            if header is not None and header.kind == "manifest":
                manifest = SnapshotManifest.model_validate_json(record.value)
                if wanted(manifest.order):
                    read.append(manifest.version)
        yield from ()

    assert list(catch_up_reads(scan, wanted, reading, reading_after)) == []
    return read


@pytest.mark.parametrize("deleted", ["base-1", "base-1-and-delta-2"])
def test_a_scan_starts_at_the_log_start_and_still_finds_the_newest_base(
    monkeypatch: pytest.MonkeyPatch, deleted: str
) -> None:
    clock = _Clock()
    monkeypatch.setattr(scan_module.time, "monotonic", clock)
    topic, at = _topic(clock)
    # retention took base 1 whole (chunks and manifest), and maybe delta 2 after it
    topic.log_start = at[1] + 1 if deleted == "base-1" else at[2] + 1
    assert _catch_up(topic, clock) == [3, 4, 5, 6, 7, 8, 9]
    assert topic.asked and min(topic.asked) >= topic.log_start, (topic.asked, topic.log_start)


def test_a_hint_below_the_log_start_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Base 3's manifest deleted too (retention sized too small): the deltas naming it point
    below the log start; the scan does not read there, ends at the log start, and finds no
    base, so nothing becomes live from the deltas alone (the server waits for a base)."""
    clock = _Clock()
    monkeypatch.setattr(scan_module.time, "monotonic", clock)
    topic, at = _topic(clock)
    topic.log_start = at[3] + 1
    read = _catch_up(topic, clock)
    assert read and not {1, 2, 3} & set(read), read
    assert topic.asked and min(topic.asked) >= topic.log_start, (topic.asked, topic.log_start)


@pytest.mark.parametrize("chunk_partition", [None, 1])
def test_a_base_whose_first_chunks_went_is_read_from_the_log_start_and_comes_up_short(
    chunk_partition: int | None,
) -> None:
    clock = _Clock()
    topic = _Retained(clock, partition=chunk_partition or 0)
    for i in range(6):
        topic.append(b"x" * 8, wire.chunk_headers("m", "run/1", i, 6, sha256_hex(b"x" * 8)))
    manifest = placeholder_manifest("run", 1).model_copy(
        update={
            "first_chunk_offset": 0,
            "chunk_partition": chunk_partition,
            "chunk_count": 6,
            "size_bytes": 48,
        }
    )
    at = 1234 if chunk_partition else _manifest(topic, manifest)
    topic.log_start = 2  # its first two chunks deleted
    spool = Spool(max_bytes=10**6)
    try:
        read_chunks(topic, Candidate(manifest, at, b"", None), spool, 10)  # type: ignore[arg-type]
        assert spool.indices() == {2, 3, 4, 5}  # the chunks still stored, nothing else
        problem = spool.check(6, 8, 48)
        assert problem is not None and problem.reason == "incomplete", problem
    finally:
        spool.close()
    assert topic.asked == [topic.log_start]  # asked from the log start, not from 0
