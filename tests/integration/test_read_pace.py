"""A base partition's reads are paced, partition 0's are not, and a paced read stays a
correct, bounded read (issue 26: a new replica's base read yields to the servers' tails when
the broker answers late; kafka/read_pace.py). Against the real broker, with both clients."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaProducer

from streamtrain.kafka import KafkaConnection, ReadTimeout, create_topics, partition_reader
from streamtrain.kafka.read_pace import ReadPace
from streamtrain.snapshot import readers as readers_module
from streamtrain.snapshot.readers import SnapshotReaders

RECORD = 64 * 1024
COUNT = 40

pytestmark = pytest.mark.kafka_client  # once with each client library


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: str) -> str:
    """Two partitions, as streamtrain lays out a snapshot topic: COUNT records on each."""
    create_topics(kafka_bootstrap, [unique_name], 2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2 * RECORD)
    for i in range(COUNT):
        for partition in (0, 1):
            producer.send(unique_name, bytes([i]) * RECORD, partition=partition)
    producer.flush(30)
    producer.close()
    return unique_name


def test_the_base_partition_is_read_paced_and_partition_zero_not(
    kafka_connection: KafkaConnection, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a pace set (``readers.BASE_READ_PACE``; None by default), it paces reads of the
    base partition only: never the tail's partition the running servers depend on."""
    monkeypatch.setattr(readers_module, "BASE_READ_PACE", ReadPace)
    readers = SnapshotReaders(kafka_connection, topic, fetch_max_wait_ms=10)
    try:
        deadline = time.monotonic() + 60
        base = readers.chunks(1)
        got = [(r.offset, bytes(r.value or b"")[:1]) for r in base.read(0, COUNT, deadline)]
        assert got == [(i, bytes([i])) for i in range(COUNT)], "every record, in order"
        pace = base.last_pace
        assert isinstance(pace, ReadPace), "the base partition's read was paced"
        assert pace.lowest_s is not None, "it timed the broker's answers"
        for reader in (readers.reader, readers.scan):  # partition 0: the tail's partition
            assert [r.offset for r in reader.read(0, COUNT, deadline)] == list(range(COUNT))
            assert reader.last_pace is None
    finally:
        readers.close()


class _AlwaysLate(ReadPace):
    """A broker that always looks late: every poll asks for a long pause."""

    def observe(self, waited_s: float) -> float:
        self.pauses += 1
        return 60.0


def test_by_default_nothing_is_paced(kafka_connection: KafkaConnection, topic: str) -> None:
    readers = SnapshotReaders(kafka_connection, topic, fetch_max_wait_ms=10)
    try:
        base = readers.chunks(1)
        assert len(list(base.read(0, COUNT, time.monotonic() + 60))) == COUNT
        assert base.last_pace is None
    finally:
        readers.close()


def test_a_paced_read_gives_every_record_and_keeps_its_deadline(
    kafka_connection: KafkaConnection, topic: str
) -> None:
    # one record a fetch, one ahead: the read takes many polls (the 1 MiB request bound that
    # librdkafka keeps at least holds ~16 of these records)
    reader = partition_reader(
        kafka_connection,
        topic=topic,
        partition=1,
        fetch_bytes=RECORD,
        queued_bytes=RECORD,
        pace=_AlwaysLate,
    )
    try:
        started = time.monotonic()
        got: list[int] = []
        with pytest.raises(ReadTimeout, match="did not finish in time"):
            for record in reader.read(0, COUNT, started + 1.0):
                got.append(record.offset)
        # Paused at most until the deadline, not for the 60 s asked (a generous bound).
        assert time.monotonic() - started < 30
        assert got == list(range(len(got))), "what it read came in order"
        assert reader.last_pace is not None and reader.last_pace.pauses >= 1
    finally:
        reader.close()
