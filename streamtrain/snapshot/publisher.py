"""The trainer's snapshot sink: newest-wins hand-off to a thread that writes to Kafka."""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from streamtrain import metrics
from streamtrain.kafka import KafkaConnection
from streamtrain.snapshot.delta import merge_requests
from streamtrain.snapshot.mailbox import NewestWinsWorker
from streamtrain.snapshot.shadow import ShadowCopy
from streamtrain.snapshot.signing import ManifestSigner
from streamtrain.snapshot.writer import ShardSpec, SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest

log = logging.getLogger(__name__)


class SnapshotPublisher:
    """Publishes weight snapshots to ``topic`` without ever blocking the training thread.

    Implements ``streamtrain.train.hooks.SnapshotSink``. ``offer`` drops the request in a
    single-slot mailbox; a background thread serializes and produces it (chunks, then the
    manifest). If a publish is still running and a request is already waiting, a newer offer
    replaces the waiting one (counted in ``streamtrain_snapshot_superseded``): memory stays
    bounded and the topic always gets the newest weights next. A failed publish is logged and
    counted in ``streamtrain_snapshot_publish_errors``; it never reaches the trainer. With a
    ``signer``, every manifest carries an Ed25519 signature (``signing.py``).

    Deltas (requests with ``rows``) keep the chain whole:

    1. a request that is superseded, or whose publish failed, is merged into the next one
       (``delta.merge_requests``), never dropped, so the next delta still covers every row
       changed since the last *published* snapshot;
    2. a delta names the last published snapshot as its predecessor and the last published
       base as its base; both move only after the manifest is acknowledged.

    Example:
        >>> publisher = SnapshotPublisher(  # doctest: +SKIP
        ...     kafka=KafkaConnection("127.0.0.1:9092"),
        ...     topic="streamtrain.snapshots", model_name="mlp",
        ...     settings_hash=settings_hash(settings.model.model_dump(mode="json")))
        >>> publisher.offer(request)  # doctest: +SKIP
        >>> publisher.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        kafka: KafkaConnection,
        topic: str,
        model_name: str,
        settings_hash: str,
        chunk_bytes: int = 512 * 1024,
        signer: ManifestSigner | None = None,
        shard: ShardSpec | None = None,
    ) -> None:
        self._writer = SnapshotWriter(
            kafka=kafka,
            topic=topic,
            model_name=model_name,
            settings_hash=settings_hash,
            chunk_bytes=chunk_bytes,
            signer=signer,
            shard=shard,
        )
        self._lock = threading.Lock()
        self._next: SnapshotRequest | None = None  # what the next publish sends (merged)
        self._shadow = ShadowCopy()
        self._base_id: str | None = None
        self._last_id: str | None = None
        self._failed = False  # the last publish failed; its rows wait in ``_next``
        self._worker: NewestWinsWorker[int] = NewestWinsWorker(
            self._publish_next, name=f"snapshot-publisher-{topic}", on_superseded=self._superseded
        )

    def offer(self, request: SnapshotRequest) -> None:
        """Hand ``request`` to the background thread; returns at once."""
        with self._lock:
            pending = self._next
            self._next = request if pending is None else merge_requests(pending, request)
        self._worker.offer(request.version)

    def _publish_next(self, version: int) -> None:
        with self._lock:
            request, self._next = self._next, None
        if request is None:
            return  # already sent under an earlier wake-up, merged with this one
        request = self._shadow.fold(request)  # a scheduled base completed from the copy
        if request is None:
            metrics.SNAPSHOT_PUBLISH_ERRORS.inc()
            return
        if request.rows is not None and self._base_id is None:
            log.error(
                "delta %s/%d has no published base; waiting for the next base",
                request.run_id,
                request.version,
            )
            metrics.SNAPSHOT_PUBLISH_ERRORS.inc()
            return
        published = self._publish(request)
        with self._lock:
            self._failed = not published
            if not published:  # keep its rows for the next publish (rule 1)
                pending = self._next
                self._next = request if pending is None else merge_requests(request, pending)

    def backlog(self) -> Literal["none", "queued", "failed"]:
        """What an offer now would be merged with: nothing; a request still queued behind a
        publish in progress; or the rows of a publish that failed. A sharded trainer's ranks
        offer only when none holds a queued request, and make the next snapshot a base after
        a failure, so the shards of a step always form one chain (shard_snapshot.py)."""
        with self._lock:
            if self._failed:
                return "failed"
            return "none" if self._next is None else "queued"

    def flush(self, timeout: float) -> bool:
        """Wait until everything offered so far is published, superseded or failed."""
        return self._worker.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Publish the newest pending request (if any), then stop the thread and the producer."""
        deadline = time.monotonic() + timeout
        if not self._worker.close(timeout):
            log.warning(
                "snapshot publisher did not finish within %.1f s; the last snapshot may be "
                "missing from topic %s",
                timeout,
                self._writer.topic,
            )
        self._writer.close(max(0.0, deadline - time.monotonic()))

    def _superseded(self, version: int) -> None:
        metrics.SNAPSHOTS_SUPERSEDED.inc()
        log.debug("snapshot version %d superseded before publishing", version)

    def _publish(self, request: SnapshotRequest) -> bool:
        started = time.perf_counter()
        try:
            manifest = self._writer.write(
                request, base_id=self._base_id, predecessor_id=self._last_id
            )
        except Exception:
            metrics.SNAPSHOT_PUBLISH_ERRORS.inc()
            log.exception(
                "publishing snapshot %s/%d to topic %s failed; training continues and the next "
                "snapshot will be tried",
                request.run_id,
                request.version,
                self._writer.topic,
            )
            # A producer that failed mid-send may hold stuck batches: start the next one fresh.
            self._writer.close(timeout=1.0)
            return False
        # the step's id, also for a shard: chains link versions, not one rank's records
        self._last_id = manifest.header.snapshot_id
        if manifest.kind == "base":
            self._base_id = manifest.header.snapshot_id
        metrics.SNAPSHOT_PUBLISH_SECONDS.observe(time.perf_counter() - started)
        metrics.export_on_first_value(
            metrics.TRAINER_REGISTRY, metrics.SNAPSHOT_BYTES, metrics.SNAPSHOT_VERSION
        )
        metrics.SNAPSHOT_BYTES.set(manifest.size_bytes)
        metrics.SNAPSHOT_VERSION.set(manifest.version)
        metrics.SNAPSHOTS_PUBLISHED.inc()
        log.info(
            "published %s %s (%d bytes, %d chunks) to %s",
            manifest.kind,
            manifest.snapshot_id,
            manifest.size_bytes,
            manifest.chunk_count,
            self._writer.topic,
        )
        return True
