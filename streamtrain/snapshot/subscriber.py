"""The server's view of the snapshot topic: the newest valid snapshot, then each new one."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

from streamtrain.kafka import KafkaConnection, PartitionReader, ReadTimeout
from streamtrain.kafka.errors import KafkaUnreachable
from streamtrain.kafka.fetch_wait import FetchWaitTuner
from streamtrain.kafka.mark_check import reread_mark
from streamtrain.kafka.reachability import REACHABILITY
from streamtrain.kafka.records import KafkaRecord
from streamtrain.sample.record_mark import RecordMark, mark_of
from streamtrain.snapshot import wire
from streamtrain.snapshot.assembly import Assembler
from streamtrain.snapshot.base_skip import BaseSkip
from streamtrain.snapshot.forward import read_forward
from streamtrain.snapshot.manifest import (
    SnapshotHeader,
    SnapshotManifest,
    SnapshotOrder,
)
from streamtrain.snapshot.readers import SnapshotReaders
from streamtrain.snapshot.scan import (
    Candidate,
    ManifestScan,
    catch_up_reads,
    incomplete,
    newest_first_order,
    read_chunks,
)
from streamtrain.snapshot.signing import ManifestVerifier
from streamtrain.snapshot.spool import Chunk, ChunkFill, Spool, return_chunk_buffers
from streamtrain.snapshot.verify import (
    MAX_CHUNKS,
    ReceivedSnapshot,
    RejectedSnapshot,
    screen_manifest,
    verify_spool,
)

log = logging.getLogger(__name__)

Result = ReceivedSnapshot | RejectedSnapshot
Wanted = Callable[[SnapshotOrder], bool]
FillFor = Callable[[SnapshotManifest], ChunkFill | None]

# Rejections queued for the next poll(); a topic flooded with junk manifests must not grow the
# queue without bound (the excess is logged as a count).
_MAX_QUEUED = 256


class SnapshotSubscriber:
    """Finds, reassembles and verifies snapshots on ``topic`` (partition 0; a base lane base's
    chunks on the partition its manifest names).

    Two consumers, both ``assign()``-ed and group-less: a *tail* that follows the end of the
    topic for :meth:`poll`, and a *reader* for random access (the scan of
    :meth:`newest_first`, and chunks the tail started too late to see). They are created on
    first use, so constructing a subscriber never touches the network: with Kafka down the
    first call raises and the caller retries (the server meanwhile serves its cached weights).

    Rejections met by :meth:`newest_first` are not lost: the next :meth:`poll` returns them
    first, so the caller counts every rejection in one place.

    With ``live`` (the server's live weights), the tail skips a base written beside the deltas
    (``wire.LANE``) that the deltas passed, and leaves one still ahead of them for the delta
    that will pass it (``base_skip.py``), so the deltas do not wait for a load that would
    change nothing.

    Example:
        >>> subscriber = SnapshotSubscriber(  # doctest: +SKIP
        ...     kafka=KafkaConnection("127.0.0.1:9092"),
        ...     topic="streamtrain.snapshots", settings_hash=expected_hash)
        >>> first = subscriber.latest(timeout_s=10)  # doctest: +SKIP
        >>> for item in subscriber.poll(timeout_s=1.0):  # doctest: +SKIP
        ...     print(item.manifest.version if isinstance(item, ReceivedSnapshot) else item.reason)
        >>> subscriber.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        kafka: KafkaConnection,
        topic: str,
        settings_hash: str,
        fetch_max_wait_ms: int = 10,
        max_snapshot_bytes: int = 2 * 1024**3,
        max_chunks: int = MAX_CHUNKS,
        verifier: ManifestVerifier | None = None,
        spool_dir: Path | None = None,
        live: Callable[[], SnapshotHeader | None] | None = None,
    ) -> None:
        self.topic = topic
        self._skip = BaseSkip(live)
        self.settings_hash = settings_hash
        self.max_snapshot_bytes = max_snapshot_bytes
        self.max_chunks = max_chunks
        self.verifier = verifier
        self._readers = SnapshotReaders(kafka, topic, fetch_max_wait_ms)
        # A new replica's slot (``WeightSlot.fill_for``): the base a catch-up reads after
        # screening its manifest is also written into the standby as its chunks arrive.
        self.fill_for: FillFor | None = None
        self.spool_dir = spool_dir  # where chunks wait for their manifest (None: $TMPDIR)
        return_chunk_buffers()
        self._assembler = self._new_assembler()
        self._pending: list[Result] = []
        self._dropped = 0
        self._tail_ready = False
        # A topic absent at start is read from its beginning once it appears, so the first
        # snapshot the trainer writes after creating it is not skipped.
        self._topic_was_missing = False
        self._tail_mark: RecordMark | None = None  # of the last record the tail returned
        self._interruptions = REACHABILITY.interruptions
        # The embedded broker's fetches at 10 ms starve once the partition is long
        # (kafka/fetch_wait.py): the tail widens its own wait once if it sees that.
        self._tail_wait = FetchWaitTuner(fetch_max_wait_ms, self._widen_tail_wait)

    @property
    def _tail(self) -> PartitionReader:
        return self._readers.tail

    def _widen_tail_wait(self, wait_ms: int) -> None:
        self._tail.set_fetch_max_wait_ms(wait_ms)

    @property
    def _reader(self) -> PartitionReader:
        return self._readers.reader

    @property
    def _scan_reader(self) -> PartitionReader:
        return self._readers.scan

    def _new_assembler(self) -> Assembler:
        return Assembler(
            max_bytes=self.max_snapshot_bytes, max_chunks=self.max_chunks, spool_dir=self.spool_dir
        )

    # --- newest snapshot on the topic ------------------------------------------------------

    def latest(self, timeout_s: float = 10.0) -> ReceivedSnapshot | None:
        """The newest complete, valid snapshot on the topic, or None (see :meth:`newest_first`)."""
        return next(self.newest_first(timeout_s), None)

    def newest_first(self, timeout_s: float = 10.0) -> Iterator[ReceivedSnapshot]:
        """Verified snapshots already on the topic, newest first by ``snapshot_order``.

        1. Find the partition's bounds; the tail is placed at the high watermark, so
           :meth:`poll` continues exactly after what this scan covered.
        2. Scan the stored range backwards (``scan.py``: newest records first, manifests
           passing checks 0-3 kept, each one's chunks jumped over).
        3. Sort them by ``snapshot_order``, newest first, not by topic position (a late
           snapshot of an older run with a lower version ranks below the newest version).
        4. For each, read its chunks (within its own budget) and verify; yield it if it
           passes. The caller applies its own checks and asks for the next one if it refuses
           (so a newest snapshot with NaN weights falls back to the one before). Each failure
           is queued for :meth:`poll`. Kafka errors propagate; ``timeout_s`` spent mid-scan
           ends the scan with what was found (logged).
        """
        scan = self._start_scan(timeout_s)
        yield from self._read_each([] if scan is None else newest_first_order(scan.rest()))

    def catch_up_order(self, timeout_s: float, wanted: Wanted) -> Iterator[ReceivedSnapshot]:
        """:meth:`newest_first` in the order that makes a catching-up server ready soonest
        (``scan.catch_up_plan``); a snapshot not ``wanted`` when its turn comes is not read.
        The scan stops at the newest base wanted (``ManifestScan.until_base``) and goes on
        only if that base is still wanted after its turn (refused, corrupt, unreadable)."""
        scan = self._start_scan(timeout_s)
        if scan is not None:
            read, read_after = (
                partial(self._read_each, wanted=wanted),
                partial(self._read_after, wanted=wanted),
            )
            yield from catch_up_reads(scan, wanted, read, read_after)

    def _start_scan(self, timeout_s: float) -> ManifestScan | None:
        """Step 1 of :meth:`newest_first`: the scan of the stored range, not yet begun."""
        deadline = time.monotonic() + timeout_s
        if not self._reader.exists():
            self._topic_was_missing = True
            log.info("snapshot topic %s does not exist yet", self.topic)
            return None
        try:
            low, high = self._reader.bounds(deadline)
        except ReadTimeout as exc:
            log.warning("no snapshot found on %s within %.1f s: %s", self.topic, timeout_s, exc)
            return None
        self._place_tail(high)
        return ManifestScan(self._scan_reader, low, high, deadline, self._screen, self._queue)

    def _read_each(
        self, candidates: Iterable[Candidate], wanted: Wanted = lambda order: True
    ) -> Iterator[ReceivedSnapshot]:
        """Step 4 of :meth:`newest_first`, for the candidates still ``wanted``."""
        for candidate in candidates:
            if not wanted(candidate.manifest.order):
                continue
            spool = self._assembler.new_spool()
            if self.fill_for is not None:
                spool.fill = self.fill_for(candidate.manifest)
            result = self._finish(candidate, spool)
            if isinstance(result, ReceivedSnapshot):
                yield result
            else:
                self._queue(result)

    def _read_after(
        self, span: tuple[int, int, float], wanted: Wanted
    ) -> Iterator[ReceivedSnapshot]:
        """The ``wanted`` snapshots after a catch-up's base, read forward (``forward.py``)."""
        for result in read_forward(
            self._reader, span, self._new_assembler(), self._screen, wanted, self._finish
        ):
            if isinstance(result, ReceivedSnapshot):
                yield result
            else:
                self._queue(result)

    def _read_chunks(self, candidate: Candidate, spool: Spool) -> None:
        reader = self._readers.chunks(candidate.manifest.chunk_partition)
        read_chunks(reader, candidate, spool, self.max_chunks)

    def _screen(
        self, record: KafkaRecord, header: wire.RecordHeader
    ) -> Candidate | RejectedSnapshot:
        raw = bytes(record.value or b"")
        manifest = screen_manifest(
            raw,
            header.snapshot_id,
            header.signature,
            settings_hash=self.settings_hash,
            max_snapshot_bytes=self.max_snapshot_bytes,
            verifier=self.verifier,
        )
        if isinstance(manifest, RejectedSnapshot):
            return manifest
        return Candidate(manifest, record.offset, raw, header.signature)

    def _verified(self, candidate: Candidate, spool: Spool) -> Result:
        result = verify_spool(candidate.manifest, spool)
        if isinstance(result, RejectedSnapshot):
            return result
        return dataclasses.replace(
            result, raw_manifest=candidate.raw, signature=candidate.signature, filled=spool.fill
        )

    def _queue(self, rejected: RejectedSnapshot) -> None:
        if len(self._pending) < _MAX_QUEUED:
            self._pending.append(rejected)
        else:
            self._dropped += 1

    # --- new snapshots ---------------------------------------------------------------------

    def poll(self, timeout_s: float) -> list[ReceivedSnapshot | RejectedSnapshot]:
        """Snapshots completed since the last call, in topic order, each verified or rejected.

        Returns as soon as there is at least one result, or after ``timeout_s`` with none.
        """
        deadline = time.monotonic() + timeout_s
        results, self._pending = self._pending, []
        if self._dropped:
            log.warning(
                "%d more rejected snapshots on %s were not itemised (over %d at once)",
                self._dropped,
                self.topic,
                _MAX_QUEUED,
            )
            self._dropped = 0
        if not self._tail_ready and not self._init_tail(deadline):
            return results
        while True:
            records = self._tail.poll(timeout_ms=_ms_left(deadline))
            self._tail_wait.observe(len(records), self._tail.waiting())
            if self._tail_log_replaced():
                continue  # the tail now reads the new log from its start
            for record in records:
                results.extend(self._on_record(record))
            if records:
                self._tail_mark = mark_of(records[-1])
            results.extend(self._assembler.expire(self._tail.caught_up()))
            due = self._skip.due(self._tail.caught_up())
            if due is not None:
                results.extend(self._load_closing(*due, self._assembler.new_spool()))
            if results or time.monotonic() >= deadline:
                return results

    def close(self) -> None:
        self._readers.close()

    # --- internals -------------------------------------------------------------------------

    def _init_tail(self, deadline: float) -> bool:
        try:
            while not self._tail.exists():
                self._topic_was_missing = True
                if time.monotonic() >= deadline:
                    return False
                # Waiting for the trainer to create the topic: re-check metadata a few times
                # a second until the caller's timeout.
                time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
            low, high = self._reader.bounds(deadline)
        except ReadTimeout:
            return False
        self._place_tail(low if self._topic_was_missing else high)
        return True

    def _tail_log_replaced(self) -> bool:
        """After an interruption: is the tail's log still the one it read (log_watch)? A
        replaced one is read from its start, so no snapshot of it is skipped; which one is
        loaded is then the version rule's choice, as always."""
        now = REACHABILITY.interruptions
        if now == self._interruptions or self._tail_mark is None:
            self._interruptions = now
            return False
        try:
            why = reread_mark(self._reader, self._tail_mark, time.monotonic() + 10.0)
        except (ReadTimeout, KafkaUnreachable):
            return False  # still down or not answering: asked again on the next poll
        self._interruptions = now
        if why is None:
            return False
        log.warning(
            "snapshot topic %s is not the log this server read (%s): reading it from its start",
            self.topic,
            why,
        )
        self._tail_mark = None
        self._assembler = self._new_assembler()
        self._place_tail(self._reader.low())
        return True

    def _place_tail(self, offset: int) -> None:
        self._tail.place(offset)
        self._tail_ready = True

    def _on_record(self, record: KafkaRecord) -> Iterable[Result]:
        header = wire.parse_headers(record.headers)
        if header is None:
            # Rejected and counted like any bad snapshot, never a topic-read failure: the tail
            # goes on with the next record.
            return [
                RejectedSnapshot(
                    "bad_record",
                    f"record at offset {record.offset} of {self.topic} is not a streamtrain "
                    "snapshot record (missing or malformed streamtrain-* headers, e.g. a chunk "
                    "header that is not <index>/<count> in ASCII digits)",
                    None,
                )
            ]
        if self._skip.passed(header):
            self._assembler.discard(header.snapshot_id)
            if header.kind == "manifest":
                log.info("base %s skipped: the live weights already hold it", header.snapshot_id)
            return []
        if header.kind == "chunk":
            chunk = Chunk(header.index, header.count, bytes(record.value or b""))
            return self._assembler.add(
                header.snapshot_id, chunk, record.offset, header.sha256, header.lane
            )
        spool = self._assembler.take(header.snapshot_id)
        if len(spool) == 0 and self._skip.hold(record, header):
            spool.close()
            return []
        return self._load_closing(record, header, spool)

    def _load_closing(
        self, record: KafkaRecord, header: wire.RecordHeader, spool: Spool
    ) -> list[Result]:
        """Verify the snapshot whose manifest is ``record`` (``_finish``)."""
        candidate = self._screen(record, header)
        if isinstance(candidate, RejectedSnapshot):
            spool.close()
            return [candidate]
        return [self._finish(candidate, spool)]

    def _finish(self, candidate: Candidate, spool: Spool) -> Result:
        """Verify ``candidate``, reading the chunks ``spool`` still lacks; ``spool`` closed
        (a verified payload keeps its own mapping of the file)."""
        try:
            if not spool.complete(candidate.manifest.chunk_count):
                self._read_chunks(candidate, spool)
        except ReadTimeout as exc:
            return incomplete(candidate.manifest.snapshot_id, exc)
        else:
            return self._verified(candidate, spool)
        finally:
            spool.close()


def _ms_left(deadline: float) -> int:
    return max(0, int((deadline - time.monotonic()) * 1000))
