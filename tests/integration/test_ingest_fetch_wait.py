"""A trainer's source on a partition whose broker trickles records out at the default 10 ms
fetch wait: the embedded broker lists every record batch per Fetch, so 40,000 one-record
batches starve a 10 ms fetch (398 records in 20 s, measured). The source must notice the
trickle and widen its fetch wait (streamtrain.kafka.fetch_wait.py), then read everything
exactly once, with either client library. A server's snapshot tail reads through a
PartitionReader with the same tuner (snapshot/subscriber.py): the reader's half is here too."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer

from streamtrain.ingest import KafkaSampleSource, SourceOptions
from streamtrain.kafka import KafkaConnection, create_topics, partition_reader
from streamtrain.kafka.fetch_wait import FetchWaitTuner
from streamtrain.sample.spec import SampleSpec

pytestmark = pytest.mark.kafka_client

SPEC = SampleSpec(feature_shape=(2,), task="binary")
RECORDS = 40_000


def _one_record_batches(bootstrap: str, topic: str) -> None:
    # batch.num.messages=1: every record is a record batch of its own in the log.
    producer = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": 1, "linger.ms": 0})
    for i in range(RECORDS):
        producer.produce(topic, value=b'{"features":[%d,1],"label":%d}' % (i, i % 2), partition=0)
        if i % 1000 == 999:
            producer.poll(0)
    assert producer.flush(60) == 0


def _long_partition(kafka: KafkaConnection, name: str) -> str:
    """A new one-partition topic holding RECORDS one-record batches; its name."""
    topic = f"{name}-{kafka.client}-{time.monotonic_ns()}"
    create_topics(kafka.bootstrap_servers, [topic], partitions=1)
    _one_record_batches(kafka.bootstrap_servers, topic)
    return topic


def test_a_trickling_fetch_path_widens_the_wait_and_delivers_every_record(
    kafka_connection: KafkaConnection, caplog: pytest.LogCaptureFixture
) -> None:
    topic = _long_partition(kafka_connection, "fetch-wait")
    seen: list[float] = []
    options = SourceOptions(start_from="earliest", max_batch_size=4096, fetch_max_wait_ms=10)
    source = KafkaSampleSource(
        spec=SPEC, topic=topic, group_id="t", kafka=kafka_connection, options=options
    )
    with caplog.at_level(logging.WARNING, logger="streamtrain.kafka.fetch_wait"), source:
        deadline = time.monotonic() + 90
        while len(seen) < RECORDS and time.monotonic() < deadline:
            batch = source.next_batch()
            if batch.size:
                seen.extend(batch.features[:, 0].tolist())
    assert any("fetch wait is raised from 10 to 250 ms" in r.getMessage() for r in caplog.records)
    assert len(seen) == RECORDS, f"{len(seen)} of {RECORDS} records read in 90 s"
    assert sorted(int(v) for v in seen) == list(range(RECORDS))


def test_a_partition_reader_tail_widens_its_wait_and_reads_on(
    kafka_connection: KafkaConnection, caplog: pytest.LogCaptureFixture
) -> None:
    """As a server's tail: placed on a long partition, polled, observed by the tuner."""
    topic = _long_partition(kafka_connection, "fetch-wait-tail")
    tail = partition_reader(kafka_connection, topic=topic, fetch_max_wait_ms=10)
    tuner = FetchWaitTuner(10, tail.set_fetch_max_wait_ms)
    offsets: list[int] = []
    try:
        tail.place(0)
        deadline = time.monotonic() + 90
        with caplog.at_level(logging.WARNING, logger="streamtrain.kafka.fetch_wait"):
            while len(offsets) < RECORDS and time.monotonic() < deadline:
                records = tail.poll(200)
                tuner.observe(len(records), tail.waiting())
                offsets.extend(r.offset for r in records)
    finally:
        tail.close()
    assert tuner.widened, "the tail's wait was not widened"
    assert offsets == list(range(RECORDS)), f"{len(offsets)} of {RECORDS} records, in order"
