"""Guarantee 7 with predictions and labels from different Kafka clients (docs/labels.md, "The
partitioning rule: murmur2"): kafka-python's default partitioner and confluent-kafka's
``murmur2_random`` place keys alike, so predictions of one and labels of the other join exactly
once; confluent-kafka's default (CRC32, ``consistent_random``) puts some labels on another
partition, and those are what the docs say: counted in
``streamtrain_join_misrouted_labels_total`` and dead-lettered ``wrong_partition``, never lost
silently and never joined twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kafka import KafkaProducer

from streamtrain.kafka import KafkaConnection
from streamtrain.kafka.partitioner import partition_for
from streamtrain.wire.label_record import encode_label_json
from streamtrain.wire.prediction_record import PredictionRecord, encode_prediction
from tests.integration.join_harness import (
    HEAD,
    JoinCase,
    by_id,
    joining,
    metrics_url,
    read_topic,
    served_sample,
    wait_for_records,
)
from tests.integration.trainer_harness import scrape

PARTITIONS = 2
MISROUTED = "streamtrain_join_misrouted_labels_total"


def _confluent(bootstrap: str, **config: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config})


def _send_confluent(producer: Producer, topic: str, records: dict[str, bytes]) -> None:
    for rid, value in records.items():
        producer.produce(topic, value=value, key=rid.encode())
        producer.poll(0)
    assert producer.flush(60) == 0, "confluent-kafka left records unsent"


def _send_kafka_python(bootstrap: str, topic: str, records: dict[str, bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for rid, value in records.items():
        producer.send(topic, value=value, key=rid.encode())
    producer.flush(60)
    producer.close(10)


@pytest.mark.kafka_client
def test_predictions_and_labels_from_different_clients_join_exactly_once(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    kafka = kafka_connection
    bootstrap = kafka.bootstrap_servers
    case = JoinCase.create(kafka, unique_name, tmp_path, PARTITIONS)
    topics = case.topics
    served_at = time.time()
    ids = [f"r-{i}" for i in range(600)]
    samples = {rid: served_sample(i, served_at) for i, rid in enumerate(ids)}
    predictions = {
        rid: encode_prediction(PredictionRecord(rid, served_at, 1, "run", (0.3, 0.7), sample))
        for rid, sample in samples.items()
    }
    labels = {rid: encode_label_json(rid, i % 2) for i, rid in enumerate(ids)}
    even, odd, crc = ids[0:400:2], ids[1:400:2], ids[400:]

    # Predictions: even ids and the CRC group by kafka-python, odd ids by confluent murmur2.
    _send_kafka_python(bootstrap, topics.predictions, {r: predictions[r] for r in even + crc})
    murmur = _confluent(bootstrap, partitioner="murmur2_random")
    _send_confluent(murmur, topics.predictions, {r: predictions[r] for r in odd})
    # Labels: the other client for each; the CRC group with confluent's default partitioner.
    _send_confluent(murmur, topics.labels, {r: labels[r] for r in even})
    _send_kafka_python(bootstrap, topics.labels, {r: labels[r] for r in odd})
    _send_confluent(_confluent(bootstrap), topics.labels, {r: labels[r] for r in crc})

    # Where each record really landed (read back, not assumed), against murmur2.
    placed = {
        (topic, (c.key or b"").decode()): c.partition
        for topic in (topics.predictions, topics.labels)
        for c in read_topic(kafka, topic)
    }
    for rid in ids:
        assert placed[(topics.predictions, rid)] == partition_for(rid.encode(), PARTITIONS), rid
    for rid in even + odd:
        assert placed[(topics.labels, rid)] == partition_for(rid.encode(), PARTITIONS), rid
    misrouted = sorted(
        r for r in crc if placed[(topics.labels, r)] != partition_for(r.encode(), PARTITIONS)
    )
    # About half of the keys, as docs/labels.md says: the failure mode is really exercised.
    assert 0 < len(misrouted) < len(crc), len(misrouted)
    joined = sorted(set(ids) - set(misrouted))

    env = case.env({"STREAMTRAIN_JOIN__LABEL_WAIT_S": "1", "STREAMTRAIN_JOIN__WINDOW_S": "600"})
    with joining(env):
        wait_for_records(kafka, topics.samples, len(joined), timeout=120)
        wait_for_records(kafka, topics.dead_letter, len(misrouted), timeout=120)
        deadline = time.monotonic() + 30
        while scrape(metrics_url(env)).get(MISROUTED, 0.0) < len(misrouted):
            assert time.monotonic() < deadline, "the misrouted labels were not all counted"
            time.sleep(0.1)  # poll interval of a condition wait
        counted = scrape(metrics_url(env))[MISROUTED]

    assert counted == len(misrouted)
    emitted = by_id(read_topic(kafka, topics.samples))
    assert sorted(emitted) == joined
    assert all(len(found) == 1 for found in emitted.values()), "an id was emitted twice"
    for rid, (sample,) in emitted.items():
        value = sample.value or b""
        assert value[HEAD:] == samples[rid][HEAD:], rid  # the served feature bytes
        assert int.from_bytes(value[16:24], "little") == int(rid[2:]) % 2, rid
    dead = by_id(read_topic(kafka, topics.dead_letter))
    assert sorted(dead) == misrouted
    for rid, (letter,) in dead.items():
        error = letter.headers["streamtrain-error"].decode()
        right = partition_for(rid.encode(), PARTITIONS)
        assert error.startswith("wrong_partition:") and f"partition {right}" in error, error
