"""Random access to the snapshot partition: its bounds and the records in an offset range."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from streamtrain.snapshot.writer import PARTITION

_POLL_SLICE_MS = 200


class ReadTimeout(TimeoutError):
    """The broker did not deliver the requested records before the deadline."""


def make_consumer(client_options: Mapping[str, Any], fetch_max_wait_ms: int) -> KafkaConsumer:
    """A group-less consumer for ``assign()`` use (KAFKA_NOTES: no group joins, low fetch wait)."""
    return KafkaConsumer(
        **client_options,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
        # Chunks are up to ~512 KiB; fetch several per round trip.
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        auto_offset_reset="earliest",
    )


class PartitionReader:
    """Reads offset ranges of partition 0 of ``topic`` with its own assigned consumer.

    >>> reader = PartitionReader(consumer, "streamtrain.snapshots")  # doctest: +SKIP
    >>> low, high = reader.bounds(deadline=time.monotonic() + 5)  # doctest: +SKIP
    >>> [r.offset for r in reader.read(low, high, deadline)]  # doctest: +SKIP
    [0, 1, 2]
    """

    def __init__(self, consumer: KafkaConsumer, topic: str) -> None:
        self.consumer = consumer
        self.tp = TopicPartition(topic, PARTITION)
        self._assigned = False

    def exists(self) -> bool:
        """Whether the broker knows the topic (metadata is refreshed on each call)."""
        partitions = self.consumer.partitions_for_topic(self.tp.topic)
        return bool(partitions) and PARTITION in partitions

    def _assign(self) -> None:
        if not self._assigned:
            self.consumer.assign([self.tp])
            self._assigned = True

    def low(self) -> int:
        """The first offset still stored (older ones were deleted by retention)."""
        self._assign()
        return int(self.consumer.beginning_offsets([self.tp])[self.tp])

    def bounds(self, deadline: float) -> tuple[int, int]:
        """``(low, high)``: first offset still stored and the high watermark.

        ``end_offsets`` is wrong on the Tansu broker when a batch holds several records
        (KAFKA_NOTES), so the high watermark is taken from a fetch response: seek to the
        (possibly short) reported end, fetch once, read ``highwater``.
        """
        low = self.low()
        self.consumer.seek_to_end(self.tp)
        while True:
            # Short slices: at the true end a fetch returns empty at once, and poll() would
            # otherwise sit out its whole timeout waiting for records that will not come.
            self.consumer.poll(timeout_ms=min(20, self._slice(deadline)), max_records=1)
            high = self.consumer.highwater(self.tp)
            if high is not None:
                return low, max(int(high), low)
            if time.monotonic() >= deadline:
                raise ReadTimeout(f"no fetch response from {self.tp} before the deadline")

    def read(self, start: int, end: int, deadline: float) -> Iterator[ConsumerRecord]:
        """Yield the records with ``start <= offset < end``, in order.

        Raises :class:`ReadTimeout` if the range is not read by ``deadline``. The caller may
        stop iterating early; the next call seeks afresh.
        """
        self._assign()
        if start >= end:
            return
        self.consumer.seek(self.tp, start)
        while self.consumer.position(self.tp) < end:
            if time.monotonic() >= deadline:
                raise ReadTimeout(
                    f"reading offsets {start}..{end - 1} of {self.tp.topic} did not finish in time"
                )
            batch = self.consumer.poll(timeout_ms=self._slice(deadline)).get(self.tp, [])
            for record in batch:
                if record.offset >= end:
                    return
                if record.offset >= start:
                    yield record

    @staticmethod
    def _slice(deadline: float) -> int:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        return max(0, min(_POLL_SLICE_MS, remaining_ms))

    def close(self) -> None:
        self.consumer.close()
