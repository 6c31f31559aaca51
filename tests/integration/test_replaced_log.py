"""A trainer whose log is replaced by a longer one: noticed by the record fingerprints.

The watermark checks of ``ingest.log_watch`` catch a new log shorter than the trainer's
position; these tests make the new log *longer* before the trainer looks, so the position is
valid in it and only the fingerprint of the last record read (compared with the record now at
that offset) tells the logs apart. Both client libraries are run whatever
``STREAMTRAIN_TEST_KAFKA_CLIENT`` says: the check must hold for each.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from streamtrain.broker import EmbeddedBroker
from streamtrain.kafka import create_topics
from tests.integration.process_output import await_condition
from tests.integration.test_kafka_outage import (
    RESETS,
    SAMPLES,
    _learn_then_lose_the_broker,
    _start,
)
from tests.integration.trainer_harness import checkpoint_meta, hyperplane_stream, produce_json

CLIENTS = ("confluent", "kafka-python")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    yield embedded
    embedded.stop()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_longer_log_behind_an_outage_is_learned_whole(
    broker: EmbeddedBroker, unique_name: str, tmp_path: Path, client: str
) -> None:
    """The issue's scenario: 2,000 learned, the broker back empty on the same port, 3,000 new
    records produced while the trainer is frozen, so they are all there before it looks."""
    old_x, old_y = hyperplane_stream(2000, seed=11)
    new_x, new_y = hyperplane_stream(3000, seed=12)
    topic = f"{unique_name}-samples"
    produce_json(broker.bootstrap_servers, topic, old_x, old_y)
    with _start(broker, unique_name, tmp_path, "earliest", client) as trainer:
        _learn_then_lose_the_broker(trainer, broker, 2000)
        os.kill(trainer.process.pid, signal.SIGSTOP)  # it looks only once the new log is there
        try:
            broker.start()
            produce_json(broker.bootstrap_servers, topic, new_x, new_y)
        finally:
            os.kill(trainer.process.pid, signal.SIGCONT)
        await_condition(
            lambda: trainer.metrics().get(SAMPLES, 0) >= 5000, "all 3,000 new samples", 120
        )
        metrics = trainer.metrics()
        assert metrics[SAMPLES] == 5000, trainer.output.text()
        assert metrics[RESETS % "earliest"] == 1.0, trainer.output.text()
        text = trainer.output.text()
        assert text.count("no longer holds the trainer's position") == 1, text
        assert "is not the one read before" in text, text


@pytest.mark.parametrize("client", CLIENTS)
def test_a_topic_re_created_longer_while_stopped_is_noticed_at_start(
    broker: EmbeddedBroker, unique_name: str, tmp_path: Path, client: str
) -> None:
    """Stopped at offset 300 with a checkpoint; the topic is re-created with 500 other records
    (more than the position); the restarted trainer learns all 500, once."""
    old_x, old_y = hyperplane_stream(300, seed=21)
    new_x, new_y = hyperplane_stream(500, seed=22)
    topic = f"{unique_name}-samples"
    produce_json(broker.bootstrap_servers, topic, old_x, old_y)
    meta = _stopped_at_offset_300(broker, unique_name, tmp_path, client)
    # The checkpoint holds the position and the fingerprint of the record before it.
    assert meta["offsets"] == {"0": 300}, meta
    extra = meta["extra"]
    assert isinstance(extra, dict) and extra["log_marks"]["0"]["offset"] == 299, meta

    broker.stop()
    broker.start()  # the topic is gone; re-created with a longer, different log
    produce_json(broker.bootstrap_servers, topic, new_x, new_y)
    with _start(broker, unique_name, tmp_path, "earliest", client) as trainer:
        await_condition(lambda: trainer.metrics().get(SAMPLES, 0) >= 500, "the new 500")
        metrics = trainer.metrics()
        assert metrics[SAMPLES] == 500, trainer.output.text()
        assert metrics[RESETS % "earliest"] == 1.0, trainer.output.text()
        # The embedded broker reports topic ids (KIP-516): the new id says it first.
        assert "a re-created topic" in trainer.output.text()


def _produce_stamped(bootstrap: str, topic: str, x: np.ndarray, y: np.ndarray) -> None:
    """Samples with fixed record timestamps: producing them again gives identical records."""
    create_topics(bootstrap, [topic], 1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i, (features, label) in enumerate(zip(x, y, strict=True)):
        body = {"features": features.tolist(), "label": int(label), "timestamp": 1.7e9 + i}
        stamp = 1_700_000_000_000 + i
        producer.send(topic, json.dumps(body).encode(), partition=0, timestamp_ms=stamp)
    producer.flush()
    producer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_byte_identical_re_created_topic_is_told_by_its_topic_id(
    broker: EmbeddedBroker, unique_name: str, tmp_path: Path, client: str
) -> None:
    """The fingerprints' blind spot (the same records again, timestamps included) is covered
    where the broker reports topic ids: the re-created topic has a new one."""
    x, y = hyperplane_stream(500, seed=31)
    topic = f"{unique_name}-samples"
    _produce_stamped(broker.bootstrap_servers, topic, x[:300], y[:300])
    extra = _stopped_at_offset_300(broker, unique_name, tmp_path, client)["extra"]
    assert isinstance(extra, dict) and extra.get("topic_id"), extra
    broker.stop()
    broker.start()
    _produce_stamped(broker.bootstrap_servers, topic, x, y)  # the same 300 first, then 200
    with _start(broker, unique_name, tmp_path, "earliest", client) as trainer:
        await_condition(lambda: trainer.metrics().get(SAMPLES, 0) >= 500, "all 500")
        metrics = trainer.metrics()
        assert metrics[SAMPLES] == 500, trainer.output.text()
        assert metrics[RESETS % "earliest"] == 1.0, trainer.output.text()
        assert f"not {extra['topic_id']}: a re-created topic" in trainer.output.text()


def _stopped_at_offset_300(
    broker: EmbeddedBroker, name: str, tmp_path: Path, client: str
) -> dict[str, object]:
    """A trainer run until it has checkpointed offset 300 of partition 0, then stopped; the
    meta of that checkpoint."""
    checkpoints = tmp_path / "checkpoints"
    with _start(broker, name, tmp_path, "earliest", client):
        await_condition(
            lambda: checkpoints.exists() and _checkpointed_offsets(checkpoints) == {"0": 300},
            "a checkpoint at offset 300",
            60,
        )
    return checkpoint_meta(checkpoints)


def _checkpointed_offsets(root: Path) -> object:
    try:
        return checkpoint_meta(root)["offsets"]
    except (AssertionError, FileNotFoundError, IndexError, ValueError):
        return None  # none written yet
