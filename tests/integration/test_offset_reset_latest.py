"""``ingest.on_offset_reset=latest``: a replaced log is skipped to its end, then followed.

A trainer learns 300 records; the broker comes back empty and 100 new records are produced
while the trainer is frozen (so they are there when it looks); ``latest`` skips exactly those
100 (counted once as a reset with policy ``latest``) and learns every record produced after,
and its checkpoints hold positions in the new log.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from streamtrain.broker import EmbeddedBroker
from tests.integration.process_output import await_condition
from tests.integration.test_kafka_outage import (
    RESETS,
    SAMPLES,
    _learn_then_lose_the_broker,
    _start,
    broker,
)
from tests.integration.trainer_harness import checkpoint_meta, hyperplane_stream, produce_json

__all__ = ["broker"]  # the per-test broker fixture, shared with the outage tests

# Runs again with kafka-python in CI (make test-integration-kafka-python).
pytestmark = pytest.mark.kafka_client


def _offsets(root: Path) -> object:
    try:
        return checkpoint_meta(root)["offsets"]
    except (AssertionError, FileNotFoundError, ValueError):
        return None  # none written yet, or one being replaced


def test_latest_skips_the_replaced_logs_records_and_learns_what_follows(
    broker: EmbeddedBroker, unique_name: str, tmp_path: Path, kafka_client: str
) -> None:
    x, y = hyperplane_stream(450, seed=71)
    topic = f"{unique_name}-samples"
    produce_json(broker.bootstrap_servers, topic, x[:300], y[:300])
    with _start(broker, unique_name, tmp_path, "latest", kafka_client) as trainer:
        _learn_then_lose_the_broker(trainer, broker, 300)
        os.kill(trainer.process.pid, signal.SIGSTOP)  # it looks only once the 100 are there
        try:
            broker.start()
            produce_json(broker.bootstrap_servers, topic, x[300:400], y[300:400])
        finally:
            os.kill(trainer.process.pid, signal.SIGCONT)
        await_condition(
            lambda: trainer.metrics().get(RESETS % "latest", 0) >= 1, "the reset to latest", 60
        )
        produce_json(broker.bootstrap_servers, topic, x[400:], y[400:])
        await_condition(lambda: trainer.metrics().get(SAMPLES, 0) >= 350, "the 50 after")
        checkpoints = tmp_path / "checkpoints"
        await_condition(lambda: _offsets(checkpoints) == {"0": 150}, "a checkpoint at 150")
        metrics = trainer.metrics()
        assert metrics[SAMPLES] == 350, trainer.output.text()  # 300 + 50: the 100 skipped
        assert metrics[RESETS % "latest"] == 1.0, trainer.output.text()
        assert metrics.get(RESETS % "earliest", 0.0) == 0.0
        text = trainer.output.text()
        assert text.count("no longer holds the trainer's position") == 1, text
