"""Guarantee 2: a dead-letter write that fails is counted, never raised.

A trainer that cannot copy a rejected record to its dead-letter topic still learns every valid
sample; each record it could not copy is counted in ``streamtrain_ingest_dead_letter_errors_total``
on its real /metrics and logged once, and SIGTERM still ends it cleanly. The records are 17 MiB
of garbage: rejected as oversized, then refused by the dead-letter producer, whose limit is
16 MiB (``ingest/deadletter.py``). (This test used a dead-letter topic named as Kafka forbids;
topic names are now checked when the settings are read, so such a trainer does not start.)
Both client libraries run.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from kafka import KafkaProducer

from streamtrain.kafka import create_topics
from tests.integration.cli_process import await_output, running_cli
from tests.integration.process_output import await_condition
from tests.integration.trainer_harness import hyperplane_stream, produce_json, scrape, trainer_env

CLIENTS = ("confluent", "kafka-python")
ERRORS = "streamtrain_ingest_dead_letter_errors_total"
REJECTED = 'streamtrain_ingest_rejected_records_total{reason="oversized"}'
SAMPLES = "streamtrain_ingest_samples_total"
OVERSIZED = 17 * 1024 * 1024  # over the dead-letter producer's 16 MiB


def _produce_oversized(bootstrap: str, topic: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=OVERSIZED + 4096)
    for i in range(count):
        producer.send(topic, bytes([i]) * OVERSIZED)
    producer.flush()
    producer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_failed_dead_letter_write_is_counted_and_training_goes_on(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, client: str
) -> None:
    x, y = hyperplane_stream(60, seed=81)
    dead_letter = f"{unique_name}-dead"
    create_topics(kafka_bootstrap, [f"{unique_name}-snapshots", dead_letter])
    valid = produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y)
    _produce_oversized(kafka_bootstrap, f"{unique_name}-samples", 6)
    env = trainer_env(
        kafka_bootstrap,
        unique_name,
        tmp_path / "ckpt",
        {
            "STREAMTRAIN_KAFKA__CLIENT": client,
            "STREAMTRAIN_TOPICS__DEAD_LETTER": dead_letter,
            "STREAMTRAIN_TRAIN__DEVICE": "cpu",
            # the dead-letter producer is flushed at each checkpoint: failures surface by then
            "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "1",
        },
    )
    with running_cli(["train", "--no-create-missing-topics"], env) as (process, output):
        url = await_output(output, r"trainer metrics: +(\S+)")
        await_condition(lambda: scrape(url).get(ERRORS, 0) >= 6, "six failed writes counted")
        metrics = scrape(url)
        assert metrics[ERRORS] == 6, output.text()
        assert metrics[REJECTED] == 6
        assert metrics[SAMPLES] == valid, "every valid sample learned"
        assert process.poll() is None, output.text()
        failures = [line for line in output.text().splitlines() if "could not write" in line]
        assert len(failures) == 6 and all(dead_letter in line for line in failures), failures
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, output.text()
    assert "Traceback" not in output.text()
