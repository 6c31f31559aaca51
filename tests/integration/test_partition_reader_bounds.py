"""A partition reader's fetch bounds, against the real broker (issue 26: a new replica reads a
whole base; its reader must not take it in a few huge fetches nor queue it far ahead).

librdkafka reports what it holds in its statistics (``stats_cb``): per partition the bytes
fetched and not yet handed to ``poll`` (``fetchq_size``), per broker connection the requests
sent by kind (``req.Fetch``). They are served by ``poll``, so a pause in the reading shows
what the client fetched ahead meanwhile at the next poll.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from kafka import KafkaProducer

from streamtrain.kafka import KafkaConnection, create_topics, partition_reader

RECORD = 256 * 1024
COUNT = 48  # 12 MiB
MiB = 1024 * 1024


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: str) -> str:
    create_topics(kafka_bootstrap, [unique_name], 1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2 * MiB)
    for i in range(COUNT):
        producer.send(unique_name, bytes([i % 256]) * RECORD, partition=0)
    producer.flush(30)
    producer.close()
    return unique_name


def _read_with_a_pause(bootstrap: str, topic: str, **bounds: Any) -> list[dict[str, Any]]:
    """Read the topic with librdkafka, pausing 0.5 s after the first record; the statistics
    it reported (every 50 ms), in order."""
    stats: list[dict[str, Any]] = []
    kafka = KafkaConnection(
        bootstrap,
        client="confluent",
        extra={"statistics.interval.ms": 50, "stats_cb": lambda s: stats.append(json.loads(s))},
    )
    reader = partition_reader(kafka, topic=topic, **bounds)
    try:
        records = reader.read(0, COUNT, time.monotonic() + 60)
        assert next(records).offset == 0
        before = len(stats)
        # Not a synchronisation: the time in which an unbounded client fetches ahead. Its
        # statistics pile up meanwhile and are served by the reads below.
        threading.Event().wait(0.5)
        offsets = [r.offset for r in records]
        assert offsets == list(range(1, COUNT)), "every record read, in order"
        assert len(stats) >= before + 5, "the pause's statistics were served"
        return stats
    finally:
        reader.close()


def _queued_bytes(stats: list[dict[str, Any]], topic: str) -> list[int]:
    return [
        int(s["topics"][topic]["partitions"]["0"]["fetchq_size"])
        for s in stats
        if topic in s["topics"]
    ]


def _fetches_and_bytes(stats: list[dict[str, Any]], topic: str) -> tuple[int, int]:
    """Fetch requests sent and record bytes received, both from the same (last) statistics:
    that report may predate the last fetches, so only a count and the bytes it brought, taken
    together, can be compared."""
    last = stats[-1]
    fetches = sum(int(b.get("req", {}).get("Fetch", 0)) for b in last["brokers"].values())
    return fetches, int(last["topics"][topic]["partitions"]["0"]["rxbytes"])


def test_a_reader_queues_no_more_than_its_bounds(kafka_bootstrap: str, topic: str) -> None:
    stats = _read_with_a_pause(kafka_bootstrap, topic, fetch_bytes=MiB, queued_bytes=MiB)
    queued = _queued_bytes(stats, topic)
    # below the bound when it fetched, plus one fetch's worth (whole records)
    assert 0 < max(queued) <= 2 * MiB + RECORD, queued
    # Fetches of at most 1 MiB each, and the record that crosses it (Kafka's rule: a fetch
    # stops after the batch that reaches its bound), framing included. The last statistics
    # may predate the last fetches (CI once saw 8 of the 10), so the bytes they had brought
    # by then are what the count is held to.
    fetches, received = _fetches_and_bytes(stats, topic)
    assert received >= COUNT * RECORD // 2, "the statistics saw most of the topic arrive"
    per_fetch = MiB + RECORD + 4096  # one crossing record and the batches' framing
    assert fetches >= -(-received // per_fetch), (fetches, received)


def test_without_a_bound_the_client_fetches_far_ahead(kafka_bootstrap: str, topic: str) -> None:
    """The control: librdkafka's default read-ahead (64 MiB) took what the pause allowed,
    so the bound above is what held the queue down."""
    stats = _read_with_a_pause(kafka_bootstrap, topic, fetch_bytes=MiB)
    assert max(_queued_bytes(stats, topic)) > 4 * MiB
