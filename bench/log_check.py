"""What checking a stored position against the log costs: one fetch per partition.

At start from a checkpoint and after every interruption (a broker outage's end, a dropped
connection, a topic reported missing), a reader fetches the record at each stored position
and compares its fingerprint (``streamtrain.kafka.mark_check.verify_marks``). This measures
that check on the embedded broker for each client library and a few partition counts, plus
the per-batch cost of taking the fingerprints (one SHA-256 of key and value per partition per
batch), next to a plain poll of the same consumer as the yardstick.

    python bench/log_check.py --records 20000 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

from streamtrain.broker import EmbeddedBroker
from streamtrain.kafka import (
    KafkaClient,
    KafkaConnection,
    create_topics,
    record_consumer,
    record_producer,
)
from streamtrain.kafka.mark_check import verify_marks
from streamtrain.sample.record_mark import RecordMark, mark_of


def _fill(kafka: KafkaConnection, topic: str, partitions: int, records: int) -> None:
    create_topics(kafka, [topic], partitions)
    producer = record_producer(kafka, linger_ms=5)
    value = b"x" * 300
    for i in range(records):
        producer.send(topic, value + str(i).encode(), key=b"k%d" % i, partition=i % partitions)
    producer.flush(60)
    producer.close(10)


def _marks(kafka: KafkaConnection, topic: str, partitions: int) -> dict[int, RecordMark]:
    """The fingerprint of a record in the middle of each partition, read once."""
    consumer = record_consumer(kafka, topic=topic)
    try:
        consumer.assign(list(range(partitions)))
        consumer.seek_to_beginning(list(range(partitions)))
        marks: dict[int, RecordMark] = {}
        deadline = time.monotonic() + 60
        while len(marks) < partitions and time.monotonic() < deadline:
            for record in consumer.poll(100, 10_000):
                if record.offset == 1000 and record.partition not in marks:
                    marks[record.partition] = mark_of(record)
        return marks
    finally:
        consumer.close()


def _measure(kafka: KafkaConnection, topic: str, partitions: int, repeats: int) -> None:
    marks = _marks(kafka, topic, partitions)
    consumer = record_consumer(kafka, topic=topic, out_of_range="raise")
    parts = list(range(partitions))
    consumer.assign(parts)
    for p in parts:
        consumer.seek(p, 2000)
    consumer.poll(200, 1000)  # connections up, as after a reconnection
    checks, polls = [], []
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            verdict = verify_marks(consumer, marks, parts)
            checks.append(time.perf_counter() - started)
            assert not verdict.replaced and not verdict.undecided, verdict
            for p in parts:
                consumer.seek(p, 2000)
            started = time.perf_counter()
            while not consumer.poll(50, 1):
                pass
            polls.append(time.perf_counter() - started)
    finally:
        consumer.close()
    check_ms, poll_ms = statistics.median(checks) * 1000, statistics.median(polls) * 1000
    print(
        f"{kafka.client:12} partitions={partitions:2}  check: median {check_ms:7.1f} ms, "
        f"max {max(checks) * 1000:7.1f} ms  |  one seek + first record: median {poll_ms:6.1f} ms"
    )


def _fingerprint_cost(repeats: int = 200_000) -> None:
    class _Record:
        offset, timestamp, key, value = 7, 1_700_000_000_000, b"request-1234", b"x" * 300

    record = _Record()
    started = time.perf_counter()
    for _ in range(repeats):
        mark_of(record)
    per = (time.perf_counter() - started) / repeats
    print(f"fingerprint of a 300-byte record: {per * 1e6:.2f} us (one per partition per batch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    _fingerprint_cost()
    with EmbeddedBroker() as broker:
        for partitions in (1, 4, 16):
            topic = f"log-check-{partitions}"
            base = KafkaConnection(broker.bootstrap_servers)
            _fill(base, topic, partitions, max(args.records, 2001 * partitions))
            clients: tuple[KafkaClient, ...] = ("confluent", "kafka-python")
            for client in clients:
                kafka = KafkaConnection(broker.bootstrap_servers, client=client)
                _measure(kafka, topic, partitions, args.repeats)


if __name__ == "__main__":
    main()
