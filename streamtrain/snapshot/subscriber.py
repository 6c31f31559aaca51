"""The server's view of the snapshot topic: the newest valid snapshot, then each new one."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from streamtrain.ingest.decode import KafkaRecord
from streamtrain.kafka import KafkaConnection, ReadTimeout, partition_reader
from streamtrain.snapshot import wire
from streamtrain.snapshot.assembly import Assembler
from streamtrain.snapshot.manifest import SnapshotManifest, parse_snapshot_id
from streamtrain.snapshot.verify import (
    Chunk,
    ReceivedSnapshot,
    RejectedSnapshot,
    assemble,
    check_manifest,
    parse_manifest,
)

log = logging.getLogger(__name__)

Result = ReceivedSnapshot | RejectedSnapshot

_FIRST_WINDOW = 2  # records; the newest manifest is normally the very last record
_MAX_WINDOW = 1024
_BACK_READ_S = 30.0  # budget to re-read a snapshot's chunks the tail did not see


class SnapshotSubscriber:
    """Finds, reassembles and verifies snapshots on ``topic`` (partition 0).

    Two consumers, both ``assign()``-ed and group-less: a *tail* that follows the end of the
    topic for :meth:`poll`, and a *reader* for random access (the backward search of
    :meth:`latest`, and chunks the tail started too late to see).

    Rejections met by :meth:`latest` while skipping broken snapshots are not lost: the next
    :meth:`poll` returns them first, so the caller counts every rejection in one place.

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
    ) -> None:
        self.topic = topic
        self.settings_hash = settings_hash
        self.max_snapshot_bytes = max_snapshot_bytes
        self._tail = partition_reader(kafka, topic=topic, fetch_max_wait_ms=fetch_max_wait_ms)
        self._reader = partition_reader(kafka, topic=topic, fetch_max_wait_ms=fetch_max_wait_ms)
        self._assembler = Assembler(max_bytes=max_snapshot_bytes)
        self._pending: list[Result] = []
        self._tail_ready = False
        # A topic absent at start is read from its beginning once it appears, so the first
        # snapshot the trainer writes after creating it is not skipped.
        self._topic_was_missing = False

    # --- newest snapshot on the topic ------------------------------------------------------

    def latest(self, timeout_s: float = 10.0) -> ReceivedSnapshot | None:
        """The newest complete, valid snapshot already on the topic, or None.

        1. Find the partition's bounds; the tail is placed at the high watermark, so
           :meth:`poll` continues exactly after what this search covered.
        2. Scan backwards in growing windows, collecting manifest records (newest first).
        3. For each manifest: validate it, check its configuration, read its chunks from
           ``first_chunk_offset``, verify. The first that passes is returned; each failure is
           queued for the next :meth:`poll` and the next older manifest is tried.
        """
        deadline = time.monotonic() + timeout_s
        try:
            if not self._reader.exists():
                self._topic_was_missing = True
                log.info("snapshot topic %s does not exist yet", self.topic)
                return None
            low, high = self._reader.bounds(deadline)
            self._place_tail(high)
            end, window = high, _FIRST_WINDOW
            while end > low:
                start = max(low, end - window)
                manifests = [
                    r for r in self._reader.read(start, end, deadline) if _kind(r) == "manifest"
                ]
                for record in reversed(manifests):
                    result = self._load(record, {}, deadline)
                    if isinstance(result, ReceivedSnapshot):
                        return result
                    log.warning("skipping snapshot: %s", result.detail)
                    self._pending.append(result)
                end, window = start, min(window * 2, _MAX_WINDOW)
        except ReadTimeout as exc:
            log.warning("no snapshot found on %s within %.1f s: %s", self.topic, timeout_s, exc)
        return None

    # --- new snapshots ---------------------------------------------------------------------

    def poll(self, timeout_s: float) -> list[ReceivedSnapshot | RejectedSnapshot]:
        """Snapshots completed since the last call, in topic order, each verified or rejected.

        Returns as soon as there is at least one result, or after ``timeout_s`` with none.
        """
        deadline = time.monotonic() + timeout_s
        results, self._pending = self._pending, []
        if not self._tail_ready and not self._init_tail(deadline):
            return results
        while True:
            for record in self._tail.poll(timeout_ms=_ms_left(deadline)):
                results.extend(self._on_record(record))
            results.extend(self._assembler.expire(self._caught_up()))
            if results or time.monotonic() >= deadline:
                return results

    def close(self) -> None:
        self._tail.close()
        self._reader.close()

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

    def _place_tail(self, offset: int) -> None:
        self._tail.place(offset)
        self._tail_ready = True

    def _caught_up(self) -> bool:
        return self._tail.caught_up()

    def _on_record(self, record: KafkaRecord) -> Iterable[Result]:
        header = wire.parse_headers(record.headers)
        if header is None:
            log.warning(
                "ignoring record at offset %d of %s: not a streamtrain snapshot record "
                "(missing or malformed streamtrain-* headers)",
                record.offset,
                self.topic,
            )
            return []
        if header.kind == "chunk":
            chunk = Chunk(header.index, header.count, bytes(record.value or b""))
            return self._assembler.add(header.snapshot_id, chunk, record.offset)
        chunks = self._assembler.take(header.snapshot_id)
        deadline = time.monotonic() + _BACK_READ_S
        try:
            return [self._load(record, chunks, deadline)]
        except ReadTimeout as exc:
            parsed = parse_snapshot_id(header.snapshot_id)
            return [
                RejectedSnapshot(
                    "incomplete",
                    f"snapshot {header.snapshot_id}: its chunks could not be read back: {exc}",
                    parsed[1] if parsed else None,
                )
            ]

    def _load(self, record: KafkaRecord, chunks: dict[int, Chunk], deadline: float) -> Result:
        """Verify the snapshot whose manifest is ``record``, reading chunks it still lacks."""
        header = wire.parse_headers(record.headers)
        sid = header.snapshot_id if header else "?"
        manifest = parse_manifest(bytes(record.value or b""), sid)
        if isinstance(manifest, RejectedSnapshot):
            return manifest
        rejected = check_manifest(manifest, self.settings_hash, self.max_snapshot_bytes)
        if rejected is not None:
            return rejected
        if len(chunks) < manifest.chunk_count:
            chunks = self._read_chunks(manifest, record.offset, deadline, chunks)
        return assemble(manifest, chunks)

    def _read_chunks(
        self,
        manifest: SnapshotManifest,
        manifest_offset: int,
        deadline: float,
        have: dict[int, Chunk],
    ) -> dict[int, Chunk]:
        """Read this snapshot's chunks between its first chunk and its manifest."""
        start = manifest.first_chunk_offset
        if start is None:
            # A manifest without the offset: its chunks precede it, normally contiguously.
            start = manifest_offset - 2 * manifest.chunk_count - 16
        chunks = dict(have)
        nbytes = 0
        # Chunks before the first stored offset were deleted by retention: assemble() reports
        # them missing ("incomplete").
        start = max(start, self._reader.low())
        for record in self._reader.read(start, manifest_offset, deadline):
            header = wire.parse_headers(record.headers)
            if header is None or header.kind != "chunk":
                continue
            if header.snapshot_id != manifest.snapshot_id:
                continue
            data = bytes(record.value or b"")
            nbytes += len(data)
            if nbytes > manifest.size_bytes + manifest.chunk_bytes:
                break  # more bytes than announced: assemble() reports the mismatch
            chunks[header.index] = Chunk(header.index, header.count, data)
            if len(chunks) >= manifest.chunk_count and all(
                i in chunks for i in range(manifest.chunk_count)
            ):
                break
        return chunks


def _kind(record: KafkaRecord) -> str | None:
    header = wire.parse_headers(record.headers)
    return header.kind if header else None


def _ms_left(deadline: float) -> int:
    return max(0, int((deadline - time.monotonic()) * 1000))
