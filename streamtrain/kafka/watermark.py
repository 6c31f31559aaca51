"""The true end of a partition, for brokers whose ListOffsets answer is short.

The embedded Tansu broker answers ListOffsets(latest) with the base offset of the last record
batch + 1 when a batch holds several records (KAFKA_NOTES); the high watermark in a fetch
response is right. Every "where does this partition end" question goes through here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from streamtrain.kafka.consumer import RecordConsumer

_POLL_MS = 20  # at the true end a fetch returns at once; short polls avoid sitting it out


def true_ends(
    consumer: RecordConsumer, partitions: Sequence[int], deadline: float
) -> dict[int, int] | None:
    """Partition -> high watermark, taken from fetch responses; None if none by ``deadline``.

    1. Seek each partition to its reported (possibly short) end.
    2. Poll until every partition has reported a high watermark in a fetch response.
    3. Return ``max(high watermark, reported end)`` per partition. The consumer's positions
       are left somewhere in between: callers seek where they want to be.
    """
    consumer.seek_to_end(partitions)
    while True:
        consumer.poll(timeout_ms=_POLL_MS, max_records=1000)
        marks = {p: consumer.highwater(p) for p in partitions}
        if all(mark is not None for mark in marks.values()):
            return {p: max(int(marks[p] or 0), consumer.position(p)) for p in partitions}
        if time.monotonic() >= deadline:
            return None
