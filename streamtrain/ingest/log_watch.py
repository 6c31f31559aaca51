"""Noticing that a partition's log no longer holds the reader's position.

Real Kafka answers a fetch beyond the log (or before its start) with OFFSET_OUT_OF_RANGE,
which the consumer raises (:class:`~streamtrain.kafka.errors.OffsetOutOfRange`). A broker that
came back empty on the same address (the embedded one) answers with an empty fetch instead, and
the consumer would wait until the new log grows past the old position, then silently skip
the new log's first records. :class:`LogWatch` catches that case from the fetch responses'
high watermarks: a position beyond the high watermark, or a high watermark lower than one
seen before (it never moves back while a log is kept), means the log was replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from streamtrain.kafka import RecordConsumer

OnOffsetReset = Literal["earliest", "latest", "fail"]


class OffsetResetFailed(RuntimeError):
    """``ingest.on_offset_reset=fail`` and a partition's log lost the trainer's position."""


class LogWatch:
    """Compares each partition's position with the high watermarks of its fetch responses.

    >>> watch = LogWatch(consumer, partitions=(0, 1))  # doctest: +SKIP
    >>> watch.moved_back()  # after a poll  # doctest: +SKIP
    {0: 'high watermark fell from 2000 to 500'}
    """

    def __init__(self, consumer: RecordConsumer, partitions: Sequence[int]) -> None:
        self._consumer = consumer
        self._high: dict[int, int] = {}
        self._partitions = tuple(partitions)

    def forget(self, partitions: Iterable[int]) -> None:
        """After a seek: the next fetch starts a fresh comparison for these partitions."""
        for p in partitions:
            self._high.pop(p, None)

    def moved_back(self) -> dict[int, str]:
        """Partition -> why, for every partition whose log lost the position since last time."""
        moved: dict[int, str] = {}
        for p in self._partitions:
            high = self._consumer.highwater(p)
            if high is None:
                continue
            before = self._high.get(p)
            self._high[p] = high
            position = self._consumer.position(p)
            if position > high:
                moved[p] = f"the log ends at {high}, before the position {position}"
            elif before is not None and high < before:
                moved[p] = f"the high watermark fell from {before} to {high}"
        return moved
