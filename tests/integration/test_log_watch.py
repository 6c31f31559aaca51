"""``LogWatch`` itself (ingest/log_watch.py) against a real broker replaced under a consumer.

Each test has a broker of its own (the embedded broker comes back empty when restarted on its
port: a replaced log) and drives one consumer and one watch the way the sample source does:
poll, ``note`` what was fetched, ``check``. The interruption count the watch reads is the
test's own, so each fingerprint check happens exactly when the test says an interruption was
reported. Runs with the client library under test (``STREAMTRAIN_TEST_KAFKA_CLIENT``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from streamtrain.broker import EmbeddedBroker
from streamtrain.ingest.log_watch import LogWatch
from streamtrain.kafka import (
    KafkaClient,
    KafkaConnection,
    RecordConsumer,
    create_topics,
    record_consumer,
    record_producer,
)
from streamtrain.kafka.records import KafkaRecord
from streamtrain.sample.record_mark import RecordMark, mark_of

pytestmark = pytest.mark.kafka_client


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    yield embedded
    embedded.stop()


class Interruptions:
    """The count a reachability tracker would report; the test moves it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


def _produce(kafka: KafkaConnection, topic: str, values: list[bytes]) -> None:
    create_topics(kafka, [topic], 1)
    producer = record_producer(kafka, linger_ms=5)
    for value in values:
        producer.send(topic, value, key=None, partition=0)
    producer.flush(30)
    producer.close(5)


def _consume(consumer: RecordConsumer, count: int, timeout: float = 30) -> list[KafkaRecord]:
    """Poll until ``count`` records came (exactly that many: the test knows the log)."""
    records: list[KafkaRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        assert time.monotonic() < deadline, f"{len(records)} of {count} records"
        records += consumer.poll(timeout_ms=100, max_records=count - len(records))
    assert len(records) == count
    return records


def _await_high(consumer: RecordConsumer, high: int, timeout: float = 60) -> None:
    """Poll (fetching nothing new) until the consumer has seen the high watermark ``high``."""
    deadline = time.monotonic() + timeout
    while consumer.highwater(0) != high:
        assert time.monotonic() < deadline, f"high watermark {consumer.highwater(0)}, not {high}"
        assert consumer.poll(timeout_ms=100, max_records=100) == []


def _partitions(records: list[KafkaRecord]) -> np.ndarray:
    return np.array([r.partition for r in records], np.int64)


def _reader(kafka: KafkaConnection, topic: str) -> RecordConsumer:
    consumer = record_consumer(kafka, topic=topic, out_of_range="raise")
    consumer.assign([0])
    consumer.seek(0, 0)
    return consumer


def _restart_with(broker: EmbeddedBroker, kafka: KafkaConnection, topic: str, n: int) -> None:
    """The broker back empty on its port, the topic re-created with ``n`` other records."""
    broker.stop()
    broker.start()
    _produce(kafka, topic, [b"new-%d" % i for i in range(n)])


@pytest.fixture
def kafka(broker: EmbeddedBroker, kafka_client: KafkaClient) -> KafkaConnection:
    return KafkaConnection(broker.bootstrap_servers, client=kafka_client)


@contextmanager
def _watching(
    kafka: KafkaConnection, topic: str, read: int
) -> Iterator[tuple[RecordConsumer, LogWatch, Interruptions]]:
    """Ten records ``old-<i>`` on ``topic``, a consumer that read and a watch that noted the
    first ``read`` of them, and the interruption count the watch reads; the consumer closes
    after the block."""
    _produce(kafka, topic, [b"old-%d" % i for i in range(10)])
    consumer = _reader(kafka, topic)
    interruptions = Interruptions()
    watch = LogWatch(consumer, (0,), interruptions)
    try:
        records = _consume(consumer, read)
        watch.note(records, _partitions(records))
        yield consumer, watch, interruptions
    finally:
        consumer.close()


def test_an_unchanged_log_passes_every_check_and_keeps_the_position(
    kafka: KafkaConnection, unique_name: str
) -> None:
    with _watching(kafka, unique_name, 10) as (consumer, watch, interruptions):
        first = watch.check()
        assert (first.replaced, first.undecided) == ({}, set())
        interruptions.count += 1  # the fingerprint of offset 9 is fetched and compared
        second = watch.check()
        assert (second.replaced, second.undecided) == ({}, set())
        assert consumer.position(0) == 10, "the check put the position back"
        _produce(kafka, unique_name, [b"old-10"])
        assert [r.value for r in _consume(consumer, 1)] == [b"old-10"], "reading goes on"


def test_a_shorter_new_log_is_caught_by_the_position_past_its_end(
    broker: EmbeddedBroker, kafka: KafkaConnection, unique_name: str
) -> None:
    # No interruption reported: only the watermarks are checked.
    with _watching(kafka, unique_name, 10) as (consumer, watch, _):
        assert watch.check().replaced == {}
        _restart_with(broker, kafka, unique_name, 3)
        _await_high(consumer, 3)
        assert watch.check().replaced == {0: "the log ends at 3, before the position 10"}


def test_a_falling_high_watermark_is_caught_below_the_old_end(
    broker: EmbeddedBroker, kafka: KafkaConnection, unique_name: str
) -> None:
    """Position 4 of a 10-record log; the new log has 6: the position is inside it, but the
    high watermark fell from 10 to 6, which a kept log never does."""
    with _watching(kafka, unique_name, 4) as (consumer, watch, _):
        assert watch.check().replaced == {}
        assert consumer.position(0) == 4
        _restart_with(broker, kafka, unique_name, 6)
        consumer.seek(0, 4)  # drop whatever the old log had prefetched past the position
        _await_high_or_records(consumer, 6)
        assert watch.check().replaced == {0: "the high watermark fell from 10 to 6"}


def _await_high_or_records(consumer: RecordConsumer, high: int, timeout: float = 60) -> None:
    """Poll until the consumer has seen ``high``; records the new log returns are dropped
    (then seek back), as a watch's caller would not use them before its check."""
    deadline = time.monotonic() + timeout
    position = consumer.position(0)
    while consumer.highwater(0) != high:
        assert time.monotonic() < deadline, f"high watermark {consumer.highwater(0)}, not {high}"
        if consumer.poll(timeout_ms=100, max_records=100):
            consumer.seek(0, position)


def test_a_longer_new_log_is_caught_only_by_the_fingerprint_after_an_interruption(
    broker: EmbeddedBroker, kafka: KafkaConnection, unique_name: str
) -> None:
    """The new log (20 records) holds the old position (10): the watermark checks pass, which
    is the documented blind spot; once an interruption is reported the fingerprint of the last
    record read (offset 9) is compared with the new log's offset 9 and the log is replaced."""
    with _watching(kafka, unique_name, 10) as (consumer, watch, interruptions):
        _restart_with(broker, kafka, unique_name, 20)
        fetched = _consume(consumer, 10)  # the new log's 10..19, not noted: checked first
        assert [r.value for r in fetched] == [b"new-%d" % i for i in range(10, 20)]
        assert watch.check().replaced == {}, "without an interruption only watermarks count"
        interruptions.count += 1
        verdict = watch.check()
        assert list(verdict.replaced) == [0] and verdict.undecided == set()
        assert "offset 9" in verdict.replaced[0], verdict.replaced
        assert consumer.position(0) == 20


def test_expected_marks_are_compared_before_use_and_forget_drops_them(
    kafka: KafkaConnection, unique_name: str
) -> None:
    """What a restart from a checkpoint does: ``expect`` the stored marks, check them once."""
    _produce(kafka, unique_name, [b"old-%d" % i for i in range(5)])
    consumer = _reader(kafka, unique_name)
    try:
        records = _consume(consumer, 5)
        true_mark = mark_of(records[2])
        forged = RecordMark(2, true_mark.timestamp, true_mark.key_sha256, "0" * 64)
        for marks, replaced in (({0: true_mark}, False), ({0: forged}, True)):
            watch = LogWatch(consumer, (0,), Interruptions())
            consumer.seek(0, 3)
            watch.expect(marks)
            verdict = watch.check()
            assert (0 in verdict.replaced) == replaced, verdict.replaced
            assert consumer.position(0) == 3
            assert watch.check().replaced == {}, "a decided mark is not checked again"
        watch = LogWatch(consumer, (0,), Interruptions())
        watch.expect({0: forged})
        watch.forget([0])  # a seek elsewhere: the stored mark no longer applies
        assert watch.check().replaced == {}
        watch.expect({1: forged})  # not a watched partition: ignored
        assert watch.check().replaced == {}
    finally:
        consumer.close()
