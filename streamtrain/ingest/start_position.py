"""Where a source starts reading (``ingest.start_from``) and where a partition truly ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from streamtrain.ingest.options import StartFrom
from streamtrain.kafka import RecordConsumer
from streamtrain.kafka.watermark import true_ends

log = logging.getLogger(__name__)


def seek_start(
    consumer: RecordConsumer, partitions: Sequence[int], start_from: StartFrom
) -> dict[int, int]:
    """Place ``consumer`` on each of ``partitions`` as ``start_from`` says; the positions."""
    if start_from == "earliest":
        consumer.seek_to_beginning(partitions)
    elif start_from == "latest":
        for p, end in partition_ends(consumer, partitions, partitions).items():
            consumer.seek(p, end)
    else:
        for p in partitions:
            offset = consumer.committed(p)
            if offset is None:
                consumer.seek_to_beginning([p])
            else:
                consumer.seek(p, offset)
    return {p: consumer.position(p) for p in partitions}


def partition_ends(
    consumer: RecordConsumer,
    assigned: Sequence[int],
    parts: Sequence[int],
    timeout_s: float = 5.0,
) -> dict[int, int]:
    """Where each of ``parts`` ends, from fetch responses (kafka.watermark: the embedded
    broker's reported end can be short); the other ``assigned`` partitions keep their
    positions (what the probe fetched of them is fetched again)."""
    others = {p: consumer.position(p) for p in assigned if p not in parts}
    ends = true_ends(consumer, parts, time.monotonic() + timeout_s)
    for p, offset in others.items():
        consumer.seek(p, offset)
    if ends is None:
        log.warning("no high watermark within %.0f s; taking the reported end", timeout_s)
        consumer.seek_to_end(parts)
        return {p: consumer.position(p) for p in parts}
    return ends
