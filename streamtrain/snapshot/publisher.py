"""The trainer's snapshot sink: newest-wins hand-off to a delta lane, and a base lane beside it."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Literal

from streamtrain import metrics
from streamtrain.kafka import KafkaConnection
from streamtrain.snapshot import wire
from streamtrain.snapshot.delta import merge_requests
from streamtrain.snapshot.lanes import BaseLane, PublishedVersion, write_counted
from streamtrain.snapshot.mailbox import NewestWinsWorker
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.shadow import ShadowCopy
from streamtrain.snapshot.signing import ManifestSigner
from streamtrain.snapshot.writer import BASE_PARTITION, PARTITION, ShardSpec, SnapshotWriter
from streamtrain.train.hooks import CopySpoiled, SnapshotRequest

log = logging.getLogger(__name__)

# The base lane acknowledges its chunks 8 MiB at a time, so deltas produced meanwhile reach
# the broker's one partition between windows instead of behind the whole base (lanes.py).
BASE_WINDOW_BYTES = 8 * 1024 * 1024
# The delta lane's whole snapshots (a process's first, a dense model's) are acknowledged in
# windows too: without one every chunk was queued in the producer at once, and librdkafka
# copies each record (its queue holds up to 1 GiB): one more model in the trainer's memory
# for a 1 GB first snapshot (bench/README.md, Delta snapshots). A delta is one window.
DELTA_WINDOW_BYTES: int | None = 8 * 1024 * 1024


class SnapshotPublisher:
    """Publishes weight snapshots to ``topic`` without ever blocking the training thread.

    Implements ``streamtrain.train.hooks.SnapshotSink``. ``offer`` drops the request in a
    single-slot mailbox; a background thread (the *delta lane*) serializes and produces it
    (chunks, then the manifest). If a publish is still running and a request is already
    waiting, a newer offer replaces the waiting one (counted in
    ``streamtrain_snapshot_superseded``): memory stays bounded and the topic always gets the
    newest weights next. A failed publish is logged and counted in
    ``streamtrain_snapshot_publish_errors``; it never reaches the trainer. With a ``signer``,
    every manifest carries an Ed25519 signature (``signing.py``).

    The chain of deltas stays whole, and a base never holds it back:

    1. a request that is superseded, or whose publish failed, is merged into the next one
       (``delta.merge_requests``), never dropped, so the next delta still covers every row
       changed since the delta lane's last *published* snapshot;
    2. a delta names that snapshot as its predecessor and the last published base (of either
       lane) as its base; both move only after the manifest is acknowledged;
    3. a full request (the first snapshot of a process, a dense model) is published on the
       delta lane itself: the chain restarts from it;
    4. a scheduled base (``complete``) goes to the *base lane* (``lanes.py``: its own thread
       and producer) as a whole clone of the shadow copy at its version, while deltas keep
       flowing; its rows are carried into the next delta, so each version is published once,
       as a base or as a delta. While the base lane is busy the base stays due, and the first
       later request folded while it is free becomes the base. A base that fails to publish
       waits for the next scheduled one (retrying a large base at once would only add load
       to whatever made it fail; the deltas carry on meanwhile);
    5. servers apply a delta on any live version of the same run between its predecessor and
       itself (``serve/weights/checks.py``), so deltas published while a base is written
       apply before and after it alike.
    6. a whole snapshot whose background copy was spoiled (``train/snapshot_copy.py`` rule
       4: the weights changed outside an optimizer step) is not published, and neither is any
       delta after it until the next whole snapshot is: the rows changed since the last
       published snapshot are not known (the trainer makes its next snapshot whole).
    7. the base lane's chunks go to partition 1 (``writer.BASE_PARTITION``; its manifest, on
       partition 0 with everything else, names it as ``chunk_partition``), so a server
       tailing partition 0 never reads a base its deltas already passed; a topic with one
       partition gets them on partition 0 as before (one warning).

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
        partition_zero = threading.Lock()  # the lanes' spans on partition 0 (writer.py)

        def writer(
            lane: str, window_bytes: int | None = None, chunk_partition: int = PARTITION
        ) -> SnapshotWriter:
            return SnapshotWriter(
                kafka=kafka,
                topic=topic,
                model_name=model_name,
                settings_hash=settings_hash,
                chunk_bytes=chunk_bytes,
                signer=signer,
                lane=lane,
                shard=shard,
                window_bytes=window_bytes,
                chunk_partition=chunk_partition,
                partition_zero=partition_zero,
            )

        self._writer = writer("", DELTA_WINDOW_BYTES)
        self._newest = PublishedVersion()
        self._lock = threading.Lock()
        self._next: SnapshotRequest | None = None  # what the next publish sends (merged)
        self._carry: SnapshotRequest | None = None  # a base lane base's rows (rule 4)
        self._base_due = False  # rule 4: a scheduled base waits for the base lane
        self._shadow = ShadowCopy()
        self._base_id: str | None = None
        self._base_offset: int | None = None  # of its manifest: the deltas' hint (scan.py)
        self._last_id: str | None = None  # the delta lane's last published snapshot
        self._sharded = shard is not None
        self._failed = False  # the last publish failed; its rows wait in ``_next``
        self._broken = False  # rule 6: a spoiled copy; deltas wait for a whole snapshot
        self._bases = BaseLane(
            # its chunks on a partition of their own: servers tail the deltas' (rule 7)
            writer(wire.BASE_LANE, BASE_WINDOW_BYTES, BASE_PARTITION),
            newest=self._newest,
            on_published=self._base_published,
            on_failed=self._base_failed,
            on_done=lambda base: self._shadow.release(),
        )
        self._worker: NewestWinsWorker[int] = NewestWinsWorker(
            self._publish_next,
            name=f"snapshot-publisher-{topic}",
            on_superseded=self._superseded,
            # woken by each offer, right after a snapshot point: it must not take the core
            # from the training thread (train/batch_policy.py)
            batch=True,
            # the delta lane's producer made when the thread starts, not at the first
            # snapshot, where creating the client held the GIL 0.3-1 ms beside the
            # training thread (``SnapshotWriter.open``; the base lane does the same)
            on_start=self._writer.open,
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
        try:
            folded = self._shadow.fold(request)
        except CopySpoiled as exc:
            self._spoiled(request, exc)
            return
        if folded is None:
            metrics.SNAPSHOT_PUBLISH_ERRORS.inc()
            return
        if self._carry is not None:  # rule 4: the rows of a base now on the base lane
            folded = merge_requests(self._carry, folded)
            self._carry = None
        if self._sharded and folded.complete and self._shadow.ready:
            # one rank's shard: its base is written whole here, at the step every rank
            # chose, so every shard of a step is of one kind (shard_assembly.py)
            folded = self._shadow.base(folded)
        if folded.rows is not None and self._broken:  # rule 6
            log.error(
                "delta %s/%d dropped: an earlier snapshot could not be copied; waiting for the "
                "next whole snapshot",
                folded.run_id,
                folded.version,
            )
            metrics.SNAPSHOT_PUBLISH_ERRORS.inc()
            return
        if folded.rows is not None and not self._sharded and self._to_base_lane(folded):
            return
        if folded.rows is not None and self._base_id is None:
            log.error(
                "delta %s/%d has no published base; waiting for the next base",
                folded.run_id,
                folded.version,
            )
            metrics.SNAPSHOT_PUBLISH_ERRORS.inc()
            return
        published = self._publish(dataclasses.replace(folded, complete=False))
        if folded.streamed:  # a shard's base, streamed from the shadow on this thread
            self._shadow.release()
        with self._lock:
            self._failed = not published
            if published and folded.rows is None:
                self._broken = False  # rule 6: the chain restarts from this whole snapshot
        if not published:
            with self._lock:  # keep its rows for the next publish (rule 1)
                pending = self._next
                self._next = folded if pending is None else merge_requests(folded, pending)

    def _spoiled(self, request: SnapshotRequest, exc: CopySpoiled) -> None:
        """Rule 6: ``request`` cannot be published and its changed rows are unknown."""
        log.warning("snapshot %s/%d not published: %s", request.run_id, request.version, exc)
        metrics.SNAPSHOT_PUBLISH_ERRORS.inc()
        with self._lock:
            self._broken = True

    def _to_base_lane(self, folded: SnapshotRequest) -> bool:
        """Rule 4: whether ``folded`` (rows) went to the base lane as a whole base."""
        with self._lock:
            due = self._base_due or folded.complete
            if not due or self._base_id is None or not self._shadow.ready:
                return False
        # Checked before the clone: a model-sized copy per delta while the lane is busy
        # would slow every delta behind it.
        if self._bases.busy or not self._bases.offer(self._shadow.base(folded)):
            with self._lock:
                self._base_due = True
            return False
        with self._lock:
            self._base_due = False
        self._carry = dataclasses.replace(folded, complete=False)
        return True

    def _base_published(self, manifest: SnapshotManifest, offset: int | None) -> None:
        with self._lock:
            self._base_id, self._base_offset = manifest.snapshot_id, offset

    def _base_failed(self, version: int) -> None:
        log.warning(
            "base %d was not published; deltas carry on, the next scheduled base replaces it",
            version,
        )

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
        deadline = time.monotonic() + timeout
        if not self._worker.flush(timeout):
            return False
        return self._bases.flush(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 10.0) -> None:
        """Publish the newest pending request (if any), finish the base being written, then
        stop both threads and producers."""
        deadline = time.monotonic() + timeout
        finished = self._worker.close(timeout)
        finished = self._bases.close(max(0.0, deadline - time.monotonic())) and finished
        if not finished:
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
        with self._lock:
            base_id, base_offset = self._base_id, self._base_offset
        manifest = write_counted(
            self._writer,
            request,
            base_id=base_id,
            predecessor_id=self._last_id,
            newest=self._newest,
            base_offset=None if self._sharded else base_offset,
        )
        if manifest is None:
            return False
        # the step's id, also for a shard: chains link versions, not one rank's records
        self._last_id = manifest.header.snapshot_id
        if manifest.kind == "base":
            with self._lock:
                self._base_id = manifest.header.snapshot_id
                self._base_offset = self._writer.manifest_offset
        return True
