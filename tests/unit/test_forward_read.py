"""The catch-up's forward read after its base (``snapshot/forward.py``), on an in-memory
partition: snapshots whose chunks are in the range are finished in topic order as the pass
reads; one whose chunks precede the range is finished after the pass, when the reader is
free for its own read; one not wanted is never finished; screening rejections pass through;
a read past the deadline ends the pass with what was read."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from streamtrain.kafka import ReadTimeout
from streamtrain.snapshot import wire
from streamtrain.snapshot.assembly import Assembler
from streamtrain.snapshot.forward import read_forward
from streamtrain.snapshot.manifest import SnapshotManifest, SnapshotOrder
from streamtrain.snapshot.scan import Candidate
from streamtrain.snapshot.spool import Spool
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot
from tests.manifest_fixtures import placeholder_manifest


@dataclasses.dataclass(frozen=True)
class _Record:
    offset: int
    value: bytes
    headers: Sequence[tuple[str, bytes]]


class _Partition:
    """Records in memory; ``reading`` while a ``read`` is being iterated; ``fail_at``: a read
    reaching that offset times out, as the real reader past its deadline."""

    def __init__(self) -> None:
        self.records: list[_Record] = []
        self.topic, self.reading, self.fail_at = "t", False, -1

    def append(self, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        self.records.append(_Record(len(self.records), value, headers))

    def read(self, start: int, end: int, deadline: float) -> Iterator[_Record]:
        self.reading = True
        try:
            for record in self.records[start:end]:
                if record.offset == self.fail_at:
                    raise ReadTimeout("past the deadline")
                yield record
        finally:
            self.reading = False


def _chunk(partition: _Partition, version: int) -> None:
    partition.append(b"x" * 8, wire.chunk_headers("m", f"run/{version}", 0, 1))


def _manifest(partition: _Partition, version: int) -> None:
    manifest = placeholder_manifest(
        "run", version, kind="delta", base_id="run/0", predecessor_id=f"run/{version - 1}"
    )
    partition.append(
        manifest.model_dump_json().encode(), wire.manifest_headers("m", f"run/{version}")
    )


def _screen(record: Any, header: wire.RecordHeader) -> Candidate | RejectedSnapshot:
    if record.value == b"junk":
        return RejectedSnapshot("signature", "not signed", None)
    manifest = SnapshotManifest.model_validate_json(record.value)
    return Candidate(manifest, record.offset, record.value, None)


def _run(partition: _Partition, start: int) -> tuple[list[tuple[int, bool, bool]], list[str]]:
    """``read_forward`` over ``[start, end)``: (version, chunks gathered, reader busy) per
    snapshot finished, in order, and the reasons of what it passed through as rejected."""
    finished: list[tuple[int, bool, bool]] = []

    def finish(candidate: Candidate, spool: Spool) -> ReceivedSnapshot | RejectedSnapshot:
        manifest = candidate.manifest
        finished.append((manifest.version, spool.complete(manifest.chunk_count), partition.reading))
        spool.close()
        return RejectedSnapshot("corrupt", "the test's finish", manifest.version)

    def wanted(order: SnapshotOrder) -> bool:
        return order[0] > 1  # version 1: the live one

    results = read_forward(
        partition,  # type: ignore[arg-type]
        (start, len(partition.records), 0.0),
        Assembler(max_bytes=10**6),
        _screen,
        wanted,
        finish,
    )
    reasons = [r.reason for r in results if isinstance(r, RejectedSnapshot)]
    return finished, reasons


def test_the_pass_finishes_in_order_and_reads_chunks_before_its_range_after_it() -> None:
    partition = _Partition()
    _chunk(partition, 4)  # before the range: snapshot 4's chunk precedes its base's manifest
    partition.append(b"{}", wire.manifest_headers("m", "run/0"))  # the base's manifest
    start = len(partition.records)
    _chunk(partition, 1)
    _manifest(partition, 1)  # not wanted: never finished
    _chunk(partition, 2)
    _manifest(partition, 2)
    partition.append(b"junk", wire.manifest_headers("m", "run/9"))  # refused by screening
    _manifest(partition, 4)  # its chunk is before the range: finished after the pass
    _chunk(partition, 3)
    _manifest(partition, 3)
    finished, reasons = _run(partition, start)
    assert finished == [(2, True, True), (3, True, True), (4, False, False)]
    assert reasons == ["corrupt", "signature", "corrupt", "corrupt"]  # in topic order


def test_a_pass_past_its_deadline_ends_with_what_it_read() -> None:
    partition = _Partition()
    for version in (2, 3, 4):
        _chunk(partition, version)
        _manifest(partition, version)
    partition.fail_at = 4  # snapshot 4's manifest is not reached in time
    finished, _ = _run(partition, 0)
    assert [version for version, _, _ in finished] == [2, 3]
