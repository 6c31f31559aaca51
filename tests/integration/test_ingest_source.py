"""KafkaSampleSource against the real broker, fed by an independent kafka-python producer.

Every test runs once per consumer client (kafka-python and confluent-kafka): exactly-once
delivery, dead letters, commit/resume, seek and lag must hold for both.
"""

from __future__ import annotations

import gc
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamtrain.ingest import ERROR_HEADER, SOURCE_HEADER, KafkaSampleSource, SourceOptions
from streamtrain.kafka import KafkaConnection, TopicNotFound, create_topics
from streamtrain.sample.batch import Batch
from streamtrain.sample.spec import SampleSpec
from tests.metrics_scrape import Exporter

# Runs again with kafka-python in CI (make test-integration-kafka-python): its Kafka path
# differs by client library.
pytestmark = pytest.mark.kafka_client

SPEC = SampleSpec(feature_shape=(16,), task="multiclass", num_classes=3)
BINARY = [("content-type", b"application/x-streamtrain-sample")]
JSON = [("content-type", b"application/json")]
DTYPE = np.dtype([("m", "S4"), ("t", "<f8"), ("w", "<f4"), ("l", "<i8"), ("f", "<f4", (16,))])


def _json(sample_id: int) -> bytes:
    feats = ",".join([str(sample_id)] + ["0.5"] * 15)
    return f'{{"features":[{feats}],"label":{sample_id % 3},"weight":2}}'.encode()


def _binary(sample_id: int, timestamp: float = math.nan) -> bytes:
    # Written by hand from docs/wire-format.md, not with streamtrain's encoder.
    row = np.zeros(1, DTYPE)
    row["m"], row["t"], row["w"], row["l"] = b"STS1", timestamp, 2.0, sample_id % 3
    row["f"][0, 0], row["f"][0, 1:] = sample_id, 0.5
    return row.tobytes()


MALFORMED = {
    "garbage": (b"\x00\xffnot a sample", []),
    "wrong_length": (_binary(0)[:-4], BINARY),
    "nan": (_json(0).replace(b"0.5", b"NaN", 1), JSON),
    "bad_label": (_json(0).replace(b'"label":0', b'"label":1.5'), []),
    "oversized": (b'{"features":[' + b"1," * 3000 + b'1],"label":0}', []),
    "unknown_type": (_json(0), [("content-type", b"text/csv")]),
    "utf16": (_json(0).decode().encode("utf-16"), JSON),  # JSON is UTF-8 only
}
EXPECTED_REASON = {
    "garbage": "undecodable",
    "wrong_length": "bad_shape",
    "nan": "non_finite",
    "bad_label": "bad_label",
    "oversized": "oversized",
    "unknown_type": "unknown_content_type",
    "utf16": "undecodable",
}


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=2)
    yield p
    p.close()


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _source(
    bootstrap: str,
    topic: str,
    group: str,
    client: str,
    connect_timeout_s: float = 30.0,
    **kwargs: object,
) -> KafkaSampleSource:
    connection = KafkaConnection(
        bootstrap,
        client=client,  # type: ignore[arg-type]
        options={"client_id": "test"},
        connect_timeout_s=connect_timeout_s,
    )
    return KafkaSampleSource(
        spec=SPEC,
        topic=topic,
        group_id=group,
        kafka=connection,
        options=SourceOptions(**kwargs),  # type: ignore[arg-type]
    )


def _drain(source: KafkaSampleSource, want_records: int, timeout: float = 20.0) -> list[Batch]:
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    while sum(b.records for b in batches) < want_records:
        assert time.monotonic() < deadline, f"only {sum(b.records for b in batches)} records"
        batch = source.next_batch()
        if batch.records:
            batches.append(batch)
    return batches


def test_valid_samples_arrive_once_and_bad_records_are_dead_lettered(
    kafka_bootstrap: str,
    unique_name: str,
    producer: KafkaProducer,
    client: str,
    trainer_metrics: Exporter,
) -> None:
    topic, dlq = unique_name, unique_name + ".dlq"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    create_topics(kafka_bootstrap, [dlq])
    sent_at = time.time()
    ids = list(range(1, 61))
    for i in ids:
        value, headers = (_json(i), JSON if i % 4 else []) if i % 2 else (_binary(i), BINARY)
        producer.send(topic, value, partition=i % 2, headers=headers)
    producer.send(topic, _binary(99, timestamp=12345.0), partition=0, headers=BINARY)
    ids.append(99)
    for n, (name, (value, headers)) in enumerate(MALFORMED.items()):
        producer.send(topic, value, key=name.encode(), partition=n % 2, headers=headers)
    producer.flush()
    total = len(ids) + len(MALFORMED)

    def rejected_now() -> dict[str, float]:
        name = "streamtrain_ingest_rejected_records_total"
        return {r: trainer_metrics.value(name, reason=r) for r in EXPECTED_REASON.values()}

    rejected_before = rejected_now()

    with _source(
        kafka_bootstrap,
        topic,
        unique_name,
        client,
        max_batch_size=7,
        max_record_bytes=4096,
        dead_letter_topic=dlq,
    ) as source:
        assert source.partitions == (0, 1)
        batches = _drain(source, total)
        assert all(b.size <= 7 for b in batches)
        features = np.concatenate([b.features for b in batches if b.size])
        labels = np.concatenate([b.labels for b in batches if b.size])
        got = features[:, 0].astype(int)
        assert sorted(got.tolist()) == sorted(ids)  # each valid sample exactly once

        # ... and each partition's samples in the order they were sent (99 went to 0 last).
        def partition(i: int) -> int:
            return 0 if i == 99 else i % 2

        for p in (0, 1):
            sent = [i for i in ids if partition(i) == p]
            assert [i for i in got.tolist() if partition(i) == p] == sent, f"partition {p}"
        assert (labels == got % 3).all()
        assert (features[:, 1:] == 0.5).all()
        assert np.concatenate([b.weights for b in batches if b.size]).tolist() == [2.0] * len(ids)
        stamps = np.concatenate([b.timestamps for b in batches if b.size])
        assert stamps[got == 99].tolist() == [12345.0]
        assert (np.abs(stamps[got != 99] - sent_at) < 60).all()  # the Kafka record timestamp
        positions = source.positions()
        per_partition = {0: 0, 1: 0}
        for i in ids[:-1]:
            per_partition[i % 2] += 1
        per_partition[0] += 1  # sample 99
        for n in range(len(MALFORMED)):
            per_partition[n % 2] += 1
        assert positions == per_partition  # past every record, rejected ones included
        source.commit(positions)

    # Exactly one count per malformed record, under its reason (two are undecodable).
    after = rejected_now()
    rejected = {r: after[r] - rejected_before[r] for r in EXPECTED_REASON.values()}
    assert rejected == dict(Counter(EXPECTED_REASON.values()))

    dead = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    dead.assign([TopicPartition(dlq, 0)])
    dead.seek_to_beginning()
    records: list[Any] = []
    deadline = time.monotonic() + 10
    while len(records) < len(MALFORMED) and time.monotonic() < deadline:
        for batch in dead.poll(timeout_ms=200).values():
            records.extend(batch)
    dead.close()
    assert len(records) == len(MALFORMED)
    for record in records:
        name = record.key.decode()
        got_headers = dict(record.headers)
        assert record.value == MALFORMED[name][0]
        assert got_headers[ERROR_HEADER].decode().startswith(EXPECTED_REASON[name] + ": ")
        t, p, o = got_headers[SOURCE_HEADER].decode().rsplit("/", 2)
        assert t == topic and int(p) in (0, 1) and int(o) >= 0
        for key, value in MALFORMED[name][1]:
            assert got_headers[key] == value  # original headers kept

    # A restarted source resumes at the committed offsets and sees only new records.
    for i in (200, 201, 202):
        producer.send(topic, _json(i), partition=i % 2)
    producer.flush()
    with _source(kafka_bootstrap, topic, unique_name, client, max_batch_size=100) as again:
        assert again.positions() == positions
        batches = _drain(again, 3)
        again_ids = np.concatenate([b.features for b in batches if b.size])[:, 0]
        assert sorted(again_ids.tolist()) == [200.0, 201.0, 202.0]


def test_cut_batches_give_exact_positions_and_seek_replays(
    kafka_bootstrap: str, unique_name: str, producer: KafkaProducer, client: str
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=1)
    for i in range(10):
        producer.send(unique_name, _json(i) if i != 5 else b"junk", partition=0)
    producer.flush()
    with _source(
        kafka_bootstrap,
        unique_name,
        unique_name,
        client,
        max_batch_size=4,
        max_wait_ms=200,
        start_from="earliest",
    ) as source:
        # One poll fetches all 10 records; batches must still be cut exactly.
        first = source.next_batch()
        assert first.features[:, 0].tolist() == [0, 1, 2, 3]
        assert dict(first.next_offsets) == {0: 4} and source.positions() == {0: 4}
        second = source.next_batch()
        assert second.features[:, 0].tolist() == [4, 6, 7, 8]
        assert dict(second.next_offsets) == {0: 9} and second.records == 5
        source.seek({0: 2})
        assert source.positions() == {0: 2}
        replay = _drain(source, 8)
        got = np.concatenate([b.features for b in replay if b.size])[:, 0].tolist()
        assert got == [2, 3, 4, 6, 7, 8, 9]
        assert source.positions() == {0: 10}
        empty = source.next_batch()
        assert empty.size == 0 and empty.records == 0 and dict(empty.next_offsets) == {0: 10}
        with pytest.raises(ValueError, match="cannot seek partitions \\[3\\]"):
            source.seek({3: 0})


def test_start_from_latest_skips_existing_records(
    kafka_bootstrap: str, unique_name: str, producer: KafkaProducer, client: str
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=1)
    for i in range(7):
        producer.send(unique_name, _json(i), partition=0)
    producer.flush()
    with _source(kafka_bootstrap, unique_name, unique_name, client, start_from="latest") as source:
        assert source.positions() == {0: 7}
        producer.send(unique_name, _json(42), partition=0)
        producer.flush()
        batches = _drain(source, 1)
        assert batches[0].features[:, 0].tolist() == [42]


def test_unknown_partition_and_topic_are_clear_errors(
    kafka_bootstrap: str, unique_name: str, client: str
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=1)
    with pytest.raises(ValueError, match=r"partitions \[4\] do not exist"):
        _source(kafka_bootstrap, unique_name, unique_name, client, partitions=[0, 4])
    missing = f"{unique_name}-never-created"
    # A short metadata wait: the topic is never created, so any wait ends the same way.
    with pytest.raises(TopicNotFound, match=f"topic '{missing}' does not exist; create it"):
        _source(kafka_bootstrap, missing, unique_name, client, connect_timeout_s=2.0)


def test_lag_is_the_fetched_high_watermark_minus_position(
    kafka_bootstrap: str, unique_name: str, client: str, trainer_metrics: Exporter
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=1)
    # Many records per batch: the case where the broker's ListOffsets(latest) is wrong on Tansu.
    batched = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=50)
    for i in range(40):
        batched.send(unique_name, _json(i), partition=0)
    batched.flush()
    batched.close()

    def lag() -> float | None:
        found = trainer_metrics.scrape()
        return found.value("streamtrain_ingest_consumer_lag_records", partition="0")

    with _source(
        kafka_bootstrap,
        unique_name,
        unique_name,
        client,
        max_batch_size=5,
        max_wait_ms=5000,
        start_from="earliest",
    ) as source:
        first = _drain(source, 1)[0]
        assert dict(first.next_offsets) == {0: 5}
        assert lag() == 35
        _drain(source, 35)
        assert source.positions() == {0: 40} and lag() == 0


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_gc_is_held_off_while_a_batch_is_read_and_restored_after(
    kafka_bootstrap: str,
    unique_name: str,
    producer: KafkaProducer,
    client: str,
    enabled_before: bool,
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=2)
    for i in range(40):
        producer.send(unique_name, _binary(i), partition=i % 2, headers=BINARY)
    producer.flush()
    with _source(kafka_bootstrap, unique_name, unique_name, client, codec="binary") as source:
        consumer = source._consumer
        real_poll = consumer.poll
        during: list[bool] = []

        def poll(timeout_ms: int, max_records: int) -> Any:
            during.append(gc.isenabled())
            return real_poll(timeout_ms=timeout_ms, max_records=max_records)

        consumer.poll = poll  # type: ignore[method-assign]
        was = gc.isenabled()
        try:
            if not enabled_before:
                gc.disable()
            batches = _drain(source, 40)
            after = gc.isenabled()
        finally:
            if was:
                gc.enable()
    assert during and not any(during)  # every poll of every batch ran with the GC off
    assert after is enabled_before  # and the GC is back as the caller had it
    ids = sorted(int(x) for b in batches for x in b.features[:, 0].tolist())
    assert ids == list(range(40))
