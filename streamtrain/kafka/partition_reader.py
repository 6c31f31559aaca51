"""Random access to one partition: its bounds, an offset range, and following its end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from streamtrain.kafka.consumer import RecordConsumer
from streamtrain.kafka.read_pace import ReadPace
from streamtrain.kafka.records import KafkaRecord
from streamtrain.kafka.watermark import true_ends

_POLL_SLICE_MS = 200
_MAX_RECORDS = 1000


class ReadTimeout(TimeoutError):
    """The broker did not deliver the requested records before the deadline."""


class PartitionReader:
    """Reads partition ``partition`` of a consumer's topic, with either client library.

    >>> reader = partition_reader(kafka, topic="snapshots")  # doctest: +SKIP
    >>> low, high = reader.bounds(deadline=time.monotonic() + 5)  # doctest: +SKIP
    >>> [r.offset for r in reader.read(low, high, deadline)]  # doctest: +SKIP
    [0, 1, 2]
    """

    def __init__(
        self,
        consumer: Callable[[], RecordConsumer],
        topic: str,
        partition: int = 0,
        pace: Callable[[], ReadPace] | None = None,
    ) -> None:
        """``pace``: makes the :class:`ReadPace` of each :meth:`read` (None: unpaced)."""
        self._make_consumer = consumer
        self._make_pace = pace
        self.last_pace: ReadPace | None = None  # the last read's, for reports
        self._made: RecordConsumer | None = None
        self.topic = topic
        self.partition = partition
        self._assigned = False

    @property
    def _consumer(self) -> RecordConsumer:
        """Built on first use: a reader made while Kafka is down (a server starting during an
        outage) raises :class:`~streamtrain.kafka.errors.KafkaUnreachable` from the call that
        needed the cluster, and tries again on the next one."""
        if self._made is None:
            self._made = self._make_consumer()
        return self._made

    def exists(self) -> bool:
        """Whether the broker knows the topic (asks for fresh metadata)."""
        return self._consumer.topic_exists()

    def partitions(self) -> tuple[int, ...]:
        """The topic's partitions (fresh metadata)."""
        return self._consumer.partitions_of_topic()

    def _assign(self) -> None:
        if not self._assigned:
            self._consumer.assign([self.partition])
            self._assigned = True

    def low(self) -> int:
        """The first offset still stored (older ones were deleted by retention)."""
        self._assign()
        return self._consumer.log_start(self.partition)

    def bounds(self, deadline: float) -> tuple[int, int]:
        """``(low, high)``: first offset still stored and the true high watermark."""
        low = self.low()
        ends = true_ends(self._consumer, [self.partition], deadline)
        if ends is None:
            raise ReadTimeout(f"no fetch response from {self.topic} before the deadline")
        return low, max(ends[self.partition], low)

    def read(self, start: int, end: int, deadline: float) -> Iterator[KafkaRecord]:
        """Yield the records with ``start <= offset < end``, in order.

        Raises :class:`ReadTimeout` if the range is not read by ``deadline``. The caller may
        stop iterating early; the next call seeks afresh. A paced reader pauses between polls
        while the broker answers late (:mod:`streamtrain.kafka.read_pace`).
        """
        self._assign()
        if start >= end:
            return
        pace = self.last_pace = None if self._make_pace is None else self._make_pace()
        resume = 0.0  # a paced read polls again from here on (the records' use counts in)
        self._consumer.seek(self.partition, start)
        while self._consumer.position(self.partition) < end:
            now = time.monotonic()
            if now < resume:
                time.sleep(min(resume, deadline) - now)
                now = time.monotonic()
            if now >= deadline:
                raise ReadTimeout(
                    f"reading offsets {start}..{end - 1} of {self.topic} did not finish in time"
                )
            records = self._consumer.poll(_slice_ms(deadline), _MAX_RECORDS)
            if pace is not None and records:
                returned = time.monotonic()
                resume = returned + pace.observe(returned - now)
            for record in records:
                if record.offset >= end:
                    return
                if record.offset >= start:
                    yield record

    # --- following the end ----------------------------------------------------------------

    def place(self, offset: int) -> None:
        """Read from ``offset`` on with :meth:`poll`."""
        self._assign()
        self._consumer.seek(self.partition, offset)

    def poll(self, timeout_ms: int) -> Sequence[KafkaRecord]:
        """The next records after the placed offset (empty after ``timeout_ms`` without)."""
        return self._consumer.poll(timeout_ms, _MAX_RECORDS)

    def caught_up(self) -> bool:
        """Whether every record up to the last fetch's high watermark has been returned."""
        return self.waiting() == 0

    def waiting(self) -> int:
        """Records past the position by the last fetch's high watermark (0 before a fetch)."""
        high = self._consumer.highwater(self.partition)
        return 0 if high is None else max(0, high - self._consumer.position(self.partition))

    def set_fetch_max_wait_ms(self, wait_ms: int) -> None:
        """The longest a fetch waits for records, from the next poll on."""
        self._consumer.set_fetch_max_wait_ms(wait_ms)

    def close(self) -> None:
        if self._made is not None:
            self._made.close()


def _slice_ms(deadline: float) -> int:
    remaining_ms = int((deadline - time.monotonic()) * 1000)
    return max(0, min(_POLL_SLICE_MS, remaining_ms))
