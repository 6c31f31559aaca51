"""Writing one snapshot with its metrics, and the base lane: scheduled bases on a thread and
producer of their own, so a large base never holds the deltas back (``publisher.py``).

Why a lane of its own: a 1 GB base took 65 s to publish on a loaded machine; on the one
publisher thread every delta waited behind it, and freshness fell off a cliff at each base
rotation. Deltas now keep flowing on their lane while the base is written.

The base lane holds at most one base (the one being written): ``offer`` refuses another while
it is busy, and the publisher converts a later snapshot into the base instead
(``publisher.py`` rule 4), so the trainer holds at most one base's stream (a bounce buffer
and an undo log, ``shadow.py``), never a copy of the model, for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from streamtrain import metrics
from streamtrain.snapshot.gil_handoff import short_switch_interval
from streamtrain.snapshot.mailbox import NewestWinsWorker
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest

log = logging.getLogger(__name__)


class PublishedVersion:
    """``streamtrain_snapshot_version`` for two lanes: the newest version either published
    (a base finishing after newer deltas must not move the gauge back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: int | None = None

    def published(self, manifest: SnapshotManifest) -> None:
        with self._lock:
            if self._newest is not None and manifest.version < self._newest:
                return
            self._newest = manifest.version
            metrics.SNAPSHOT_BYTES.set(manifest.size_bytes)
            metrics.SNAPSHOT_VERSION.set(manifest.version)


def write_counted(
    writer: SnapshotWriter,
    request: SnapshotRequest,
    *,
    base_id: str | None,
    predecessor_id: str | None,
    newest: PublishedVersion,
    base_offset: int | None = None,
) -> SnapshotManifest | None:
    """Write ``request`` and count it; None (logged, counted) when the write failed. A whole
    snapshot is written with a short GIL switch interval (``gil_handoff.py``)."""
    started = time.perf_counter()
    handoff = short_switch_interval() if request.rows is None else contextlib.nullcontext()
    try:
        with handoff:
            manifest = writer.write(
                request, base_id=base_id, predecessor_id=predecessor_id, base_offset=base_offset
            )
    except Exception:
        metrics.SNAPSHOT_PUBLISH_ERRORS.inc()
        log.exception(
            "publishing snapshot %s/%d to topic %s failed; training continues and the next "
            "snapshot will be tried",
            request.run_id,
            request.version,
            writer.topic,
        )
        # A producer that failed mid-send may hold stuck batches: start the next one fresh.
        writer.close(timeout=1.0)
        return None
    metrics.SNAPSHOT_PUBLISH_SECONDS.observe(time.perf_counter() - started)
    metrics.export_on_first_value(
        metrics.TRAINER_REGISTRY, metrics.SNAPSHOT_BYTES, metrics.SNAPSHOT_VERSION
    )
    newest.published(manifest)
    metrics.SNAPSHOTS_PUBLISHED.inc()
    log.info(
        "published %s %s (%d bytes, %d chunks) to %s",
        manifest.kind,
        manifest.snapshot_id,
        manifest.size_bytes,
        manifest.chunk_count,
        writer.topic,
    )
    return manifest


class BaseLane:
    """Writes whole bases with ``writer`` (its own producer, chunks marked ``lane: base``)
    on its own thread; ``on_published`` gets each acknowledged manifest and its topic offset,
    ``on_failed`` the
    version of each base that could not be written; ``on_done`` then gets the base back
    (the lane no longer reads it: the caller ends its stream's bookkeeping)."""

    def __init__(
        self,
        writer: SnapshotWriter,
        *,
        newest: PublishedVersion,
        on_published: Callable[[SnapshotManifest, int | None], None],
        on_failed: Callable[[int], None],
        on_done: Callable[[SnapshotRequest], None] = lambda request: None,
    ) -> None:
        self._writer = writer
        self._on_done = on_done
        self._newest = newest
        self._on_published = on_published
        self._on_failed = on_failed
        self._lock = threading.Lock()
        self._busy = False
        self._worker: NewestWinsWorker[SnapshotRequest] = NewestWinsWorker(
            # bulk: its wake-ups (and its producer's client threads') never preempt the
            # training thread (train/batch_policy.py)
            self._write,
            name=f"snapshot-base-lane-{writer.topic}",
            batch=True,
            # its producer made now, not at the first rotation (``SnapshotWriter.open``), on
            # this thread: its client threads are batch threads too
            on_start=writer.open,
        )

    @property
    def busy(self) -> bool:
        """Whether a base is being written (only ``offer`` makes it busy: a caller that is
        the only one offering may check this first and skip building a base it cannot hand
        over)."""
        with self._lock:
            return self._busy

    def offer(self, request: SnapshotRequest) -> bool:
        """Start writing ``request`` (a whole base the caller owns); False while busy."""
        with self._lock:
            if self._busy:
                return False
            self._busy = True
        self._worker.offer(request)
        return True

    def _write(self, request: SnapshotRequest) -> None:
        try:
            manifest = write_counted(
                self._writer, request, base_id=None, predecessor_id=None, newest=self._newest
            )
            if manifest is None:
                self._on_failed(request.version)
            else:
                self._on_published(manifest, self._writer.manifest_offset)
            self._on_done(request)  # before the lane is free: no base is being built now
        finally:
            with self._lock:
                self._busy = False

    def flush(self, timeout: float) -> bool:
        return self._worker.flush(timeout)

    def close(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        finished = self._worker.close(timeout)
        self._writer.close(max(0.0, deadline - time.monotonic()))
        return finished
