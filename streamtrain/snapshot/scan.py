"""A new replica's scan of the snapshot topic: its manifests, without reading its bases.

The topic is read backwards from its end in small windows of records. A window's manifests
are screened (checks 0-3 of ``verify.py``: nothing of their chunks is needed) and kept as
candidates. A manifest that passes names where its chunks start (``first_chunk_offset``),
and the publisher writes a snapshot's chunks just before its manifest, so the scan **jumps
over them**: the next window ends at that offset. A base of 2000 chunks therefore costs the
scan one window, not 1 GB of reads, and a replica's time to ready is bounded by reading the
base it loads (plus the deltas after it), however many bases retention keeps.

Limits of the jump, in the order they are checked:

1. only from a manifest that passed screening (signed, when signatures are required): a
   forged or damaged record moves nothing;
2. only as far as the manifest's own announced chunks could reach (``2 x chunk_count + 16``
   records back, the bound a manifest without ``first_chunk_offset`` is read with), so one
   manifest cannot hide the rest of the topic;
3. a manifest written *between* another snapshot's first chunk and its manifest is skipped:
   that takes two publishers writing at once, which the topic layout does not support (one
   trainer per topic, docs/snapshots.md, Versions).
4. never from one rank's shard of a sharded trainer's step (``ShardInfo``): every rank
   publishes at once, so the shards' chunks and manifests interleave on the topic and a
   jump would skip the other shards' manifests. The scan of such a topic reads its chunks
   (the cost of a sharded job; docs/snapshots.md, Sharded tables).
5. nothing to jump over for a base lane base whose chunks are on the base partition
   (``chunk_partition``): the record before its manifest is read next.

Windows are one record after a jump (the record before a snapshot's first chunk is normally
the previous snapshot's manifest: one read per snapshot, none of its chunks) and double, up
to ``_MAX_WINDOW`` records, while they find nothing to jump from (a publish in progress or
one that died). The Kafka client still fetches ahead of what the scan asks for (a fetch of
the snapshot reader, ``kafka/factory.py``): a fixed amount, whatever the base size.

A catching-up server stops the scan at the newest base (``ManifestScan.until_base``): the
newest delta names its base's manifest by offset (``base_offset``, a hint checked like any
record), so the scan reads that record next and jumps there; without a usable hint it goes
on window by window to the first base. It then reads the one snapshot before the base (what
precedes a base *in sequence* is older: one trainer per topic, versions growing; one out of
sequence makes it read everything) and resumes only if that base is refused. A new replica
on a 0.26 GB topic read ~420 manifests one window each (17 s of a 33 s time to ready).
What it then reads, in order (``catch_up_plan``): the newest base it
wants, then the deltas after it oldest first, then the rest newest first. Reading the deltas
newer than the base before it (one seek and read each) kept a replica unready for 13 s of
its 47 s at a 0.26 GB base with 28 deltas after it; now it is ready once the base is read.
The snapshots after that base are then read forward in one pass (``forward.py``), not
scanned back and read one by one (``catch_up_reads``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator

from streamtrain.kafka import PartitionReader, ReadTimeout
from streamtrain.kafka.records import KafkaRecord
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest, SnapshotOrder, parse_snapshot_id
from streamtrain.snapshot.spool import Chunk, Spool
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot

log = logging.getLogger(__name__)

_READ_S, _READ_BYTES_PER_S = 30.0, 8e6  # a snapshot's read-back budget (read_chunks)
_FIRST_WINDOW = 1  # records
_MAX_WINDOW = 1024


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A manifest that passed screening, with where it is on the topic."""

    manifest: SnapshotManifest
    offset: int
    raw: bytes
    signature: str | None


Screen = Callable[[KafkaRecord, wire.RecordHeader], Candidate | RejectedSnapshot]


class ManifestScan:
    """The backwards scan of ``[low, high)`` (the module's rules), one window per :meth:`step`,
    resumable: a catching-up server stops it at the newest base (:meth:`until_base`) and
    resumes it only if that base is refused. Rejections go to ``rejected``; a read past
    ``deadline`` ends the scan with what was found (logged)."""

    def __init__(
        self,
        reader: PartitionReader,
        low: int,
        high: int,
        deadline: float,
        screen: Screen,
        rejected: Callable[[RejectedSnapshot], None],
    ) -> None:
        self._reader, self._low, self._deadline = reader, low, deadline
        self._budget = max(0.0, deadline - time.monotonic())  # renewed by ``renew``
        self._screen, self._rejected = screen, rejected
        self._end, self._window = high, _FIRST_WINDOW
        self.high = high  # the end of the scanned range (the tail reads on from there)
        self._skipped: tuple[int, int] | None = None  # the range a hint jumped over
        self.windows = 0  # windows read (the bench and tests count them)
        self.topic = reader.topic

    @property
    def deadline(self) -> float:
        return self._deadline

    @property
    def done(self) -> bool:
        return self._end <= self._low

    def step(self) -> list[Candidate]:
        """The candidates of the next window back (none once :attr:`done`)."""
        if self.done:
            return []
        found: list[Candidate] = []
        start = max(self._low, self._end - self._window)
        resume = start
        try:
            for record in self._reader.read(start, self._end, self._deadline):
                header = wire.parse_headers(record.headers)
                if header is None or header.kind != "manifest":
                    continue
                screened = self._screen(record, header)
                if isinstance(screened, RejectedSnapshot):
                    self._rejected(screened)
                    continue
                found.append(screened)
                resume = min(resume, _chunks_start(screened))
        except ReadTimeout as exc:
            log.warning(
                "scan of %s cut short (%s); choosing among the snapshots found so far",
                self._reader.topic,
                exc,
            )
            self._end = self._low
            return found
        self.windows += 1
        jumped = resume < start
        self._end = max(self._low, resume)
        self._window = _FIRST_WINDOW if jumped else min(self._window * 2, _MAX_WINDOW)
        return found

    def rest(self) -> list[Candidate]:
        """Every candidate left, to the start of the range."""
        found: list[Candidate] = []
        while not self.done:
            found.extend(self.step())
        return found

    def until_base(self, wanted: Callable[[SnapshotOrder], bool]) -> list[Candidate]:
        """Candidates up to the newest base (in topic position), with every shard of its
        step and the snapshot written just before it; everything when there is no base or
        it is not *in sequence*. The rest of the topic is then older (one trainer per topic,
        versions growing across its runs): not ``wanted`` when that base is not, and read
        only if that base is refused otherwise (docs/snapshots.md, Finding the newest base).

        In sequence: every snapshot found of another run ranks below the base. A late
        snapshot of an older run, still alive, written after a newer run's (newest by topic
        position, lowest by version) is not; the scan then reads everything, so a new
        replica picks the version a running one holds (``test_serve_replicas.py``)."""
        found: list[Candidate] = []
        base: Candidate | None = None
        while not self.done:
            window = self.step()
            found.extend(window)
            if base is not None:
                if window:  # the snapshot(s) just before the base: the check is complete
                    break
                continue
            base = next((c for c in found if c.manifest.kind == "base"), None)
            if base is None:
                found.extend(self._follow_hint(window, wanted))
                base = next((c for c in found if c.manifest.kind == "base"), None)
            if base is not None and not _all_shards(base, found):
                base = None  # its other shards are further back
        if base is not None and not _in_sequence(base, found):
            found.extend(self.rest())
        return found

    def _follow_hint(
        self, window: list[Candidate], wanted: Callable[[SnapshotOrder], bool]
    ) -> list[Candidate]:
        """The base the newest delta of ``window`` names by offset (``base_offset``), read at
        once, the scan going on from before it; the range between is left for
        :meth:`skipped`. Only from a delta that passed screening, to a record before it that
        is a manifest passing screening, of a base ``wanted``, with the id the delta names;
        otherwise nothing (the scan goes on window by window). Once per scan."""
        delta = next((c for c in window if c.manifest.base_offset is not None), None)
        if self._skipped is not None or delta is None or delta.manifest.shard is not None:
            return []
        at = delta.manifest.base_offset
        if at is None or not self._low <= at < min(self._end, delta.offset):
            return []
        try:
            record = next(iter(self._reader.read(at, at + 1, self._deadline)), None)
        except ReadTimeout:
            return []
        header = None if record is None else wire.parse_headers(record.headers)
        if record is None or header is None or header.kind != "manifest":
            return []
        if header.snapshot_id != delta.manifest.base_id:
            return []
        base = self._screen(record, header)
        if isinstance(base, RejectedSnapshot) or base.manifest.kind != "base":
            return []  # the window-by-window scan meets it and reports it
        if not wanted(base.manifest.order):
            return []  # a server past it: the deltas after it are what it reads
        self._skipped = (at + 1, self._end)
        self._end, self._window = max(self._low, _chunks_start(base)), _FIRST_WINDOW
        return [base]

    def renew(self) -> None:
        """A fresh deadline, as long as the first: the scan goes on after a base was read (a
        1 GB base's read took 58 s of a replica's 60 s at load ~27, and the deltas after it
        were then cut short)."""
        self._deadline = time.monotonic() + self._budget

    def skipped(self) -> list[Candidate]:
        """Every candidate in the range a hint jumped over (none without a jump)."""
        if self._skipped is None:
            return []
        low, high = self._skipped
        self._skipped = (low, low)
        return ManifestScan(
            self._reader, low, high, self._deadline, self._screen, self._rejected
        ).rest()


def _in_sequence(base: Candidate, found: list[Candidate]) -> bool:
    """Whether every candidate of another run ranks below ``base`` (``until_base``)."""
    run, order = base.manifest.run_id, base.manifest.order
    return all(c.manifest.run_id == run or c.manifest.order < order for c in found)


def _all_shards(base: Candidate, found: list[Candidate]) -> bool:
    """Whether every shard of ``base``'s step is among ``found`` (an unsharded base: True)."""
    shard = base.manifest.shard
    if shard is None:
        return True
    indexes = {
        c.manifest.shard.index
        for c in found
        if c.manifest.shard is not None and c.manifest.order == base.manifest.order
    }
    return len(indexes) >= shard.world


def newest_first_order(candidates: list[Candidate]) -> list[Candidate]:
    """Step 3 of ``SnapshotSubscriber.newest_first``."""
    return sorted(candidates, key=lambda c: c.manifest.order, reverse=True)


def incomplete(snapshot_id: str, exc: ReadTimeout) -> RejectedSnapshot:
    parsed = parse_snapshot_id(snapshot_id)
    return RejectedSnapshot(
        "incomplete",
        f"snapshot {snapshot_id}: its chunks could not be read back: {exc}",
        parsed[1] if parsed else None,
    )


def _chunks_start(candidate: Candidate) -> int:
    """Where the candidate's chunks start, within the reach of its own chunk count."""
    manifest, offset = candidate.manifest, candidate.offset
    if manifest.shard is not None or manifest.chunk_partition is not None:
        return offset  # rule 4; or its chunks are on the base partition: nothing to jump
    first = manifest.first_chunk_offset
    reach = offset - 2 * manifest.chunk_count - 16
    if first is None or not reach <= first < offset:
        return offset
    return first


def catch_up_plan(
    candidates: list[Candidate], wanted: Callable[[SnapshotOrder], bool]
) -> list[Candidate]:
    """``candidates`` (newest first) in catch-up order: the newest base ``wanted`` (with the
    other shards of its step), the deltas newer than it oldest first (they follow it in the
    chain; ``serve/weights/delta_chain.py``), then the rest newest first (a fallback should
    that base be refused). Without such a base: newest first (the deltas may link to the
    live version)."""
    base = next(
        (c for c in candidates if c.manifest.kind == "base" and wanted(c.manifest.order)), None
    )
    if base is None:
        return candidates
    order = base.manifest.order
    return [c for c in candidates if c.manifest.order == order] + _around(order, candidates)


def _around(order: SnapshotOrder, candidates: list[Candidate]) -> list[Candidate]:
    """``candidates`` (newest first) not of ``order``: the newer oldest first, then the older
    newest first."""
    newer = [c for c in candidates if c.manifest.order > order]
    return newer[::-1] + [c for c in candidates if c.manifest.order < order]


ReadAfter = Callable[[tuple[int, int, float]], Iterator[ReceivedSnapshot]]


def catch_up_reads(
    scan: ManifestScan,
    wanted: Callable[[SnapshotOrder], bool],
    read: Callable[[list[Candidate]], Iterator[ReceivedSnapshot]],
    read_after: ReadAfter,
) -> Iterator[ReceivedSnapshot]:
    """What a catching-up server reads, in order, through ``read`` (which verifies, and
    skips what is no longer ``wanted``): the newest base wanted first (``until_base``), then
    the snapshots after it, then those found before it, in ``catch_up_plan`` order; then,
    only if that base is still wanted (refused, corrupt, unreadable), the rest of the topic
    the same way.

    The snapshots after an unsharded base are read forward in one pass (``read_after``:
    the records from the base's manifest to the end of the scanned range, in batched
    fetches, as the tail reads them), not by a backward scan of their manifests and one
    read each: a server started 15 s after the base spent 9.3 s on 54 such scan windows and
    54 reads of 0.43 MB deltas before its first poll (bench/README.md, start-up gap)."""
    plan = catch_up_plan(newest_first_order(scan.until_base(wanted)), wanted)
    first = plan[0] if plan else None
    if first is None or first.manifest.kind != "base" or not wanted(first.manifest.order):
        yield from read(plan + newest_first_order(scan.skipped()))
        return
    order = first.manifest.order
    step = [c for c in plan if c.manifest.order == order]
    yield from read(step)
    scan.renew()
    if first.manifest.shard is None:  # a sharded step's shards interleave (scan rule 4)
        yield from read_after((first.offset + 1, scan.high, scan.deadline))
        before = [c for c in plan[len(step) :] if c.offset < first.offset]
        yield from read(_around(order, before))
    else:
        yield from read(_around(order, newest_first_order(plan[len(step) :] + scan.skipped())))
    if scan.done or not wanted(order):
        return  # the base is live (or older than what is): nothing older is wanted
    log.info("the newest base on %s was not loaded; scanning the older snapshots", scan.topic)
    scan.renew()
    yield from read(catch_up_plan(newest_first_order(scan.rest()), wanted))


def read_chunks(
    reader: PartitionReader, candidate: Candidate, spool: Spool, max_chunks: int
) -> None:
    """Read ``candidate``'s chunks between its first chunk and its manifest into ``spool``
    (``reader`` is of the partition they are on: a base lane base's ``chunk_partition``, read
    from its first chunk for at most its own reach), within 30 s plus 1 s per 8 MB (a 1 GB
    base took over 30 s to read back on the loaded bench machine, so it was never loaded);
    ``ReadTimeout`` past that."""
    manifest = candidate.manifest
    deadline = time.monotonic() + _READ_S + manifest.size_bytes / _READ_BYTES_PER_S
    reach = 2 * manifest.chunk_count + 16  # a manifest's chunks, with room for interleaving
    start, end = manifest.first_chunk_offset, candidate.offset
    if start is None:
        # A manifest without the offset: its chunks precede it, normally contiguously.
        start = candidate.offset - reach
    # Chunks before the first stored offset were deleted by retention: assemble() reports
    # them missing ("incomplete").
    if manifest.chunk_partition is None:
        start = max(start, reader.low())
    else:  # on the base partition, from the first chunk on (its own end bounds the read)
        low, high = reader.bounds(deadline)
        start, end = max(start, low), min(high, start + reach)
    nbytes = 0
    for record in reader.read(start, end, deadline):
        header = wire.parse_headers(record.headers)
        if header is None or header.kind != "chunk":
            continue
        if header.snapshot_id != manifest.snapshot_id:
            continue
        data = bytes(record.value or b"")
        nbytes += len(data)
        if nbytes > manifest.size_bytes + manifest.chunk_bytes or len(spool) > max_chunks:
            break  # more than announced: verify_spool() reports the mismatch
        spool.add(Chunk(header.index, header.count, data), header.sha256)
        if spool.complete(manifest.chunk_count):
            break
