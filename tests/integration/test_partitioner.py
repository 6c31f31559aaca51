"""One partitioning rule for predictions and labels, whatever the client library.

Servers and ``LabelProducer`` place keyed records by murmur2 (``streamtrain/kafka/partitioner``)
with either ``kafka.client``; a label producer on librdkafka's default (CRC32) is told about
loudly by the join (metric, WARNING naming the setting, ``wrong_partition`` dead letters)
instead of losing labels as ``unknown_id``; one on murmur2 (kafka-python's default, or
librdkafka with ``partitioner=murmur2_random``) has every label joined.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from confluent_kafka import Producer
from kafka import KafkaProducer

from streamtrain.builders.server import build_worker
from streamtrain.client import LabelProducer
from streamtrain.config import Settings
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.kafka.partitioner import partition_for
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.server import ServingWorker
from tests.integration.join_harness import (
    JoinCase,
    by_id,
    join_metric,
    joining,
    metrics_url,
    read_topic,
)
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import prediction_log, publish, wait
from tests.integration.test_serve_prediction_log import _infer, _settings

CLIENTS = ("confluent", "kafka-python")
PARTITIONS = 3
MISROUTED = "streamtrain_join_misrouted_labels_total"


@pytest.fixture(params=CLIENTS)
def served(
    request: pytest.FixtureRequest, kafka_bootstrap: str, unique_name: str
) -> Iterator[tuple[Settings, ServingWorker]]:
    default = _settings(kafka_bootstrap, unique_name)
    settings = default.model_copy(
        update={"kafka": default.kafka.model_copy(update={"client": request.param})}
    )
    create_topics(kafka_bootstrap, [settings.topics.snapshots])
    create_topics(kafka_bootstrap, [settings.topics.predictions], partitions=PARTITIONS)
    worker = build_worker(settings)
    worker.start()
    publish(settings, 5)
    try:
        wait(
            lambda: (
                httpx.get(f"{worker.url}/v2/health/ready", timeout=REQUEST_S).status_code == 200
            ),
            "ready",
        )
        yield settings, worker
    finally:
        worker.stop()


def test_the_server_logs_predictions_by_murmur2_with_either_client(
    served: tuple[Settings, ServingWorker],
) -> None:
    settings, worker = served
    ids = [f"order-{i}" for i in range(60)]
    rows = np.zeros((1, 4), np.float32)
    for rid in ids:
        assert _infer(worker.url, rows, rid).status_code == 200
    records = prediction_log(settings, len(ids))
    placed = {r.key.decode(): r.partition for r in records}
    assert set(placed) == set(ids)
    assert placed == {rid: partition_for(rid.encode(), PARTITIONS) for rid in ids}
    assert len(set(placed.values())) == PARTITIONS  # the rule spread them: a real check


@pytest.mark.parametrize("client", CLIENTS)
def test_label_producer_places_labels_by_murmur2(
    kafka_bootstrap: str, unique_name: str, client: str
) -> None:
    topic = f"{unique_name}-labels"
    create_topics(kafka_bootstrap, [topic], partitions=PARTITIONS)
    kafka = KafkaConnection(
        kafka_bootstrap, client="confluent" if client == "confluent" else "kafka-python"
    )
    ids = [f"r-{i}" for i in range(60)]
    with LabelProducer(
        spec=SampleSpec(feature_shape=(4,), task="binary"), topic=topic, kafka=kafka
    ) as labels:
        for rid in ids:
            labels.send(rid, 1)
    records = read_topic(kafka, topic)
    placed = {(r.key or b"").decode(): r.partition for r in records}
    assert placed == {rid: partition_for(rid.encode(), PARTITIONS) for rid in ids}


def _librdkafka_labels(bootstrap: str, topic: str, ids: list[str], **config: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config})
    for rid in ids:
        producer.produce(topic, key=rid.encode(), value=json.dumps({"id": rid, "label": 1}))
    assert producer.flush(60) == 0


def _kafka_python_labels(bootstrap: str, topic: str, ids: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)  # its default: murmur2
    for rid in ids:
        producer.send(topic, json.dumps({"id": rid, "label": 1}).encode(), key=rid.encode())
    producer.flush(60)
    producer.close(10)


def test_labels_from_other_producers_join_or_are_reported(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=PARTITIONS)
    kafka, topics = case.kafka, case.topics
    by_kafka_python = [f"kp-{i}" for i in range(40)]
    by_librdkafka_murmur = [f"lm-{i}" for i in range(40)]
    by_librdkafka_default = [f"ld-{i}" for i in range(40)]
    everyone = by_kafka_python + by_librdkafka_murmur + by_librdkafka_default
    case.predictions(everyone, time.time())
    bootstrap = kafka.bootstrap_servers
    _kafka_python_labels(bootstrap, topics.labels, by_kafka_python)
    _librdkafka_labels(bootstrap, topics.labels, by_librdkafka_murmur, partitioner="murmur2_random")
    _librdkafka_labels(bootstrap, topics.labels, by_librdkafka_default)  # CRC32
    labels = read_topic(kafka, topics.labels)
    misplaced = {
        (r.key or b"").decode()
        for r in labels
        if r.partition != partition_for(r.key or b"", PARTITIONS)
    }
    assert misplaced and misplaced <= set(by_librdkafka_default), misplaced

    env = case.env({"STREAMTRAIN_JOIN__LABEL_WAIT_S": "0.5", "STREAMTRAIN_JOIN__WINDOW_S": "3600"})
    with joining(env) as run:
        url = metrics_url(env)
        metrics = join_metric(url, MISROUTED, len(misplaced) - 0.5, timeout=90)
        joined = case.samples(len(everyone) - len(misplaced), 90)
        dead = case.dead_letters(len(misplaced), 90)
    assert metrics[MISROUTED] == len(misplaced)
    assert set(by_id(joined)) == set(everyone) - misplaced  # every murmur2-placed label joined
    reasons = {
        (d.key or b"").decode(): d.headers["streamtrain-error"].split(b":")[0].decode()
        for d in dead
    }
    assert reasons == {rid: "wrong_partition" for rid in misplaced}
    warnings = [line for line in run.output.splitlines() if "partitioner=murmur2_random" in line]
    assert len(warnings) == 1, run.output  # rate-limited: one line for the whole burst
    assert "consistent_random" in warnings[0] and "murmur2" in warnings[0], warnings
