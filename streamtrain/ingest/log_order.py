"""Batches that are a function of the log: merge order plus when a batch may be cut early.

Two runs over the same log must cut the same batches, or a trainer restored from a checkpoint
learns a different sequence than an uninterrupted one. Fetch timing decides two things that
:class:`LogOrder` takes away from it, per poll (:meth:`LogOrder.feed`):

1. Which record comes next: the poll's records are held in a
   :class:`~streamtrain.ingest.partition_merge.PartitionMerge`; what the log order allows is
   released into the batch buffer.
2. Where a batch ends: a batch is cut when full; past the ``max_wait_ms`` deadline a partial
   batch is cut only once every partition is caught up (its position reached the high
   watermark of the last fetch). Replaying a backlog therefore always cuts full batches; a
   live, caught-up stream still gets a batch per deadline.
3. The one exception, counted in ``streamtrain_ingest_partition_waits_expired_total`` and
   logged at most once a minute: a partition with unfetched records that delivers nothing
   for ``max_partition_idle_ms`` is no longer waited for (the merge proceeds without it, or a
   partial batch is cut while it lags), so a slow broker cannot stall training. Kafka
   Streams makes the same trade with ``max.task.idle.ms``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from streamtrain import metrics
from streamtrain.ingest.buffer import BatchBuffer
from streamtrain.ingest.decode import DecodedChunk
from streamtrain.ingest.partition_merge import PartitionMerge

log = logging.getLogger(__name__)

_LOG_EVERY_SECONDS = 60.0


class LogOrder:
    """Feeds decoded polls through the merge into a batch buffer and says when to cut."""

    def __init__(self, max_partition_idle_ms: int, clock: Callable[[], float] = time.monotonic):
        if max_partition_idle_ms < 0:
            raise ValueError(f"max_partition_idle_ms must be >= 0, got {max_partition_idle_ms}")
        self._max_idle = max_partition_idle_ms / 1000.0
        self._clock = clock
        self._merge = PartitionMerge(self._max_idle, clock)
        self._last_records_at = clock()
        self._expired_since_log = 0
        self._logged_at = float("-inf")

    def feed(
        self,
        chunk: DecodedChunk | None,
        buffer: BatchBuffer,
        unfinished: Callable[[], set[int]],
        deadline_passed: bool,
        max_samples: int,
    ) -> bool:
        """Take one poll's records (None: the poll returned nothing); True when the batch in
        ``buffer`` may be cut now."""
        now = self._clock()
        if chunk is not None and len(chunk.offsets):
            self._merge.add(chunk)
            self._last_records_at = now
        if not self._merge.records and not deadline_passed:
            return False
        behind = unfinished()
        released = self._merge.release(behind)
        if released.chunk is not None:
            buffer.add(released.chunk)
        if released.gave_up:
            self._expired(released.gave_up, "merged without it")
        if buffer.samples >= max_samples:
            return True
        if not deadline_passed:
            return False
        if not behind:
            return True
        if now - self._last_records_at >= self._max_idle:
            rest = self._merge.release(behind, force=True)
            if rest.chunk is not None:
                buffer.add(rest.chunk)
            lagging = sorted(behind - set(released.gave_up))  # one count per expired wait
            if lagging:
                self._expired(lagging, "cut a partial batch while it lagged")
            self._last_records_at = now
            return True
        return False

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        self._merge.drop_partitions(partitions)

    def _expired(self, partitions: Iterable[int], what: str) -> None:
        parts = list(partitions)
        for p in parts:
            metrics.INGEST_PARTITION_WAITS_EXPIRED.labels(str(p)).inc()
        self._expired_since_log += 1
        now = self._clock()
        if now - self._logged_at >= _LOG_EVERY_SECONDS:
            log.warning(
                "partition(s) %s had unfetched records but delivered none for %.0f ms: %s "
                "(%d such waits since the last report); these batches may differ from a "
                "replay of the same log (ingest.max_partition_idle_ms)",
                parts,
                self._max_idle * 1000,
                what,
                self._expired_since_log,
            )
            self._logged_at, self._expired_since_log = now, 0
