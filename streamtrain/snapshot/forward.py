"""A catching-up server's forward read of the snapshots after the base it loaded.

The tail (``subscriber.poll``) reads the topic forward in batched fetches, gathering chunks
until their manifest arrives; the catch-up after a base does the same over the range from
that base's manifest to where the tail starts (``scan.catch_up_reads``). Before, it scanned
that range's manifests backwards (one window per snapshot) and then read each snapshot's
chunks with a seek of its own: ~170 ms per delta, 9.3 s for 54 deltas of 0.43 MB on the
bench machine (bench/README.md, start-up gap), with stale answers meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from streamtrain.kafka import PartitionReader, ReadTimeout
from streamtrain.kafka.records import KafkaRecord
from streamtrain.snapshot import wire
from streamtrain.snapshot.assembly import Assembler
from streamtrain.snapshot.manifest import SnapshotOrder
from streamtrain.snapshot.scan import Candidate
from streamtrain.snapshot.spool import Chunk, Spool
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot

log = logging.getLogger(__name__)

Result = ReceivedSnapshot | RejectedSnapshot
Screen = Callable[[KafkaRecord, wire.RecordHeader], Candidate | RejectedSnapshot]


def read_forward(
    reader: PartitionReader,
    span: tuple[int, int, float],
    assembler: Assembler,
    screen: Screen,
    wanted: Callable[[SnapshotOrder], bool],
    finish: Callable[[Candidate, Spool], Result],
) -> Iterator[Result]:
    """The snapshots whose manifests are in ``[start, end)`` of ``reader`` (``span`` is
    ``start, end, deadline``), with every rejection, in topic order. Chunks go to
    ``assembler`` as the tail's do; each manifest is screened (``screen``: signature and
    settings, as the tail's) and, when its snapshot is ``wanted``, verified with the chunks
    gathered (``finish``: sha256 of each chunk and the payload). One whose chunks are not all
    in the range (they precede it, or retention deleted some) is finished after the pass, when
    ``finish`` may read them from ``reader`` itself. A read past the deadline ends the pass
    with what was read (logged): the snapshots left are a gap the watcher catches up later."""
    later: list[tuple[Candidate, Spool]] = []
    try:
        yield from _pass(reader, span, assembler, screen, wanted, finish, later)
        while later:
            yield finish(*later.pop(0))
    finally:
        for _, spool in later:  # the caller stopped reading: nothing more is finished
            spool.close()
        for snapshot_id in assembler.open_ids():
            assembler.discard(snapshot_id)  # chunks of a snapshot whose manifest came later


def _pass(
    reader: PartitionReader,
    span: tuple[int, int, float],
    assembler: Assembler,
    screen: Screen,
    wanted: Callable[[SnapshotOrder], bool],
    finish: Callable[[Candidate, Spool], Result],
    later: list[tuple[Candidate, Spool]],
) -> Iterator[Result]:
    """The pass of :func:`read_forward`; the snapshots to finish after it go to ``later``."""
    start, end, deadline = span
    try:
        for record in reader.read(start, end, deadline) if start < end else ():
            header = wire.parse_headers(record.headers)
            if header is None:
                continue  # not a snapshot record: the scan passes over these too
            if header.kind == "chunk":
                chunk = Chunk(header.index, header.count, bytes(record.value or b""))
                yield from assembler.add(
                    header.snapshot_id, chunk, record.offset, header.sha256, header.lane
                )
                continue
            spool = assembler.take(header.snapshot_id)
            candidate = screen(record, header)
            if isinstance(candidate, RejectedSnapshot) or not wanted(candidate.manifest.order):
                spool.close()
                yield from [candidate] if isinstance(candidate, RejectedSnapshot) else []
            elif spool.complete(candidate.manifest.chunk_count):
                yield finish(candidate, spool)
            else:
                later.append((candidate, spool))
    except ReadTimeout as exc:
        log.warning("catch-up read of %s cut short (%s)", reader.topic, exc)
