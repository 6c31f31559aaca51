"""The confluent-kafka RecordConsumer on its own against the real broker: what the source
tests do not reach."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from streamtrain.kafka import (
    KafkaConnection,
    RecordConsumer,
    TopicNotFound,
    create_topics,
    record_consumer,
)
from streamtrain.kafka.confluent_records import MessageRecords
from streamtrain.kafka.records import KafkaRecord, RecordColumns, SettlingRecords, record_columns
from streamtrain.sample.record_mark import mark_of


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
    yield p
    p.close()


def _consumer(bootstrap: str, topic: str, metadata_timeout_s: float = 10.0) -> RecordConsumer:
    return record_consumer(
        KafkaConnection(bootstrap, client="confluent"),
        topic=topic,
        group_id=topic,
        metadata_timeout_s=metadata_timeout_s,
    )


def _poll_until(
    consumer: RecordConsumer, done: Callable[[list[KafkaRecord]], bool]
) -> list[KafkaRecord]:
    got: list[KafkaRecord] = []
    deadline = time.monotonic() + 10
    while not done(got):
        assert time.monotonic() < deadline, f"only {len(got)} records"
        got.extend(consumer.poll(timeout_ms=100, max_records=1000))
    return got


def _threads() -> int:
    """librdkafka's threads in this process (it names them ``rdk:main``, ``rdk:broker…``):
    not the whole process's, which other tests' exporters and servers come and go in."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{task}/comm").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        count += name.startswith("rdk:")
    return count


def test_seek_before_first_poll_commit_resume_and_record_fields(
    kafka_bootstrap: str, unique_name: str, producer: KafkaProducer
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=2)
    for i in range(20):
        producer.send(
            unique_name,
            str(i).encode(),
            key=f"k{i}".encode(),
            partition=i % 2,
            headers=[("content-type", b"application/json"), ("trace", b"t%d" % i)],
            timestamp_ms=1_700_000_000_000 + i,
        )
    producer.flush()
    threads_before = _threads()
    consumer = _consumer(kafka_bootstrap, unique_name)
    assert consumer.partitions_of_topic() == (0, 1)
    consumer.assign([0, 1])
    assert consumer.committed(0) is None
    consumer.seek(0, 7)  # before any fetch: positions the first assignment
    consumer.seek_to_beginning([1])
    assert (consumer.position(0), consumer.position(1)) == (7, 0)
    records = _poll_until(consumer, lambda got: len(got) >= 3 + 10)
    assert len(records) == 13
    by_partition = {p: [r.offset for r in records if r.partition == p] for p in (0, 1)}
    assert by_partition == {0: [7, 8, 9], 1: list(range(10))}
    assert (consumer.position(0), consumer.position(1)) == (10, 10)
    first = next(r for r in records if r.partition == 0)
    i = int(first.value or b"-1")
    assert (first.topic, first.key, first.timestamp) == (
        unique_name,
        f"k{i}".encode(),
        1_700_000_000_000 + i,
    )
    assert list(first.headers) == [("content-type", b"application/json"), ("trace", b"t%d" % i)]
    consumer.commit({0: 9, 1: 4})
    assert (consumer.committed(0), consumer.committed(1)) == (9, 4)
    # Seek back after fetching: nothing prefetched from before the seek comes through.
    consumer.seek(1, 2)
    again = _poll_until(consumer, lambda got: len(got) >= 8)
    assert [r.offset for r in again] == list(range(2, 10))
    assert consumer.highwater(0) == 10 and consumer.highwater(1) == 10
    consumer.close()
    consumer.close()  # idempotent
    deadline = time.monotonic() + 5
    while _threads() > threads_before:  # librdkafka joins its threads on close
        assert time.monotonic() < deadline, f"{_threads() - threads_before} threads left"
        time.sleep(0.05)

    resumed = _consumer(kafka_bootstrap, unique_name)
    resumed.assign([0, 1])  # never sought: starts at the committed offsets
    assert (resumed.position(0), resumed.position(1)) == (9, 4)
    tail = _poll_until(resumed, lambda got: len(got) >= 7)
    assert sorted((r.partition, r.offset) for r in tail) == [(0, 9)] + [
        (1, o) for o in range(4, 10)
    ]
    resumed.close()


def test_columns_match_field_by_field_reading(
    kafka_bootstrap: str, unique_name: str, producer: KafkaProducer
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=1)
    for i in range(5):
        headers = [("Content-Type", b"application/x-streamtrain-sample")] if i % 2 else []
        producer.send(unique_name, None if i == 3 else b"v%d" % i, key=b"k", headers=headers)
    producer.flush()
    consumer = _consumer(kafka_bootstrap, unique_name)
    consumer.assign([0])
    # However the broker splits the 5 records over polls, each poll's own Sequence is read
    # both ways and compared.
    values: list[bytes | None] = []
    content_types: list[bytes | None] = []
    deadline = time.monotonic() + 10
    while len(values) < 5:
        assert time.monotonic() < deadline, f"only {len(values)} records"
        records = consumer.poll(timeout_ms=200, max_records=100)
        if not records:
            continue
        fast = record_columns(records)
        slow = record_columns(list(records))  # plain records, read attribute by attribute
        assert isinstance(fast, RecordColumns)
        for name in ("partitions", "offsets", "timestamps_ms"):
            assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
        assert list(fast.values) == list(slow.values)
        assert list(fast.content_types) == list(slow.content_types)
        values += fast.values
        content_types += fast.content_types
    consumer.close()
    assert values == [b"v0", b"v1", b"v2", None, b"v4"]
    assert content_types[1] == content_types[3] == b"application/x-streamtrain-sample"
    assert content_types[0] is None


def _reaches_a_message(root: object, depth: int = 4) -> bool:
    """Whether any confluent ``Message`` object is reachable from ``root`` within ``depth``
    references (a settled poll's columns are at most three deep)."""
    from confluent_kafka import Message

    seen, level = {id(root)}, [root]
    for _ in range(depth):
        level = [r for o in level for r in gc.get_referents(o) if id(r) not in seen]
        seen.update(map(id, level))
        if any(isinstance(o, Message) for o in level):
            return True
    return False


def test_a_settled_poll_frees_its_messages_and_keeps_its_rejects_whole(
    kafka_bootstrap: str, unique_name: str, producer: KafkaProducer
) -> None:
    """After settle() a poll holds no ``Message`` (so records buffered past a batch cost the
    GC nothing); the records it keeps whole (rejects, for the dead-letter copy) keep their
    headers, every other record keeps each field a record mark reads, and its headers say
    why they are gone instead of reading empty."""
    create_topics(kafka_bootstrap, [unique_name], partitions=1)
    headers = [("content-type", b"application/json")]
    for i in range(6):
        producer.send(unique_name, b"v%d" % i, key=None if i == 2 else b"k%d" % i, headers=headers)
    producer.flush()
    consumer = _consumer(kafka_bootstrap, unique_name)
    consumer.assign([0])
    seen = 0
    deadline = time.monotonic() + 10
    while seen < 6:
        assert time.monotonic() < deadline, f"only {seen} records"
        records = consumer.poll(timeout_ms=200, max_records=100)
        if not records:
            continue
        assert isinstance(records, MessageRecords) and isinstance(records, SettlingRecords)
        assert _reaches_a_message(records)
        whole = list(records)  # read from the messages, headers included
        columns = record_columns(records, content_types=False)
        records.settle({0})
        assert not _reaches_a_message(records)
        assert record_columns(records, content_types=False) is columns
        assert records[0] == whole[0] and list(records[0].headers) == headers
        for i in range(1, len(records)):
            kept, was = records[i], whole[i]
            for field in ("topic", "partition", "offset", "timestamp", "key", "value"):
                assert getattr(kept, field) == getattr(was, field), field
            assert mark_of(kept) == mark_of(was)
            with pytest.raises(LookupError, match="only a rejected record keeps them"):
                _ = kept.headers
        assert [r.offset for r in records[-2:]] == [r.offset for r in whole[-2:]]
        seen += len(records)
    consumer.close()


def test_missing_topic_is_topic_not_found(kafka_bootstrap: str, unique_name: str) -> None:
    consumer = _consumer(kafka_bootstrap, unique_name, metadata_timeout_s=0.5)
    with pytest.raises(TopicNotFound, match=f"topic '{unique_name}' does not exist"):
        consumer.partitions_of_topic()
    consumer.close()
