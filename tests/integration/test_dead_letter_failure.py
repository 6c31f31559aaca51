"""Guarantee 2: a dead-letter write that fails is counted, never raised.

A trainer whose dead-letter topic the broker refuses (a name Kafka forbids; the trainer is told
not to create topics) still learns every valid sample; each malformed record it could not copy
is counted in ``streamtrain_ingest_dead_letter_errors_total`` on its real /metrics and logged
once, and SIGTERM still ends it cleanly. Both client libraries run: kafka-python refuses the
name when the record is handed over (the synchronous path), librdkafka when the broker answers
(the delivery callback).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from streamtrain.kafka import create_topics
from tests.integration.cli_process import await_output, running_cli
from tests.integration.process_output import await_condition
from tests.integration.trainer_harness import hyperplane_stream, produce_json, scrape, trainer_env

CLIENTS = ("confluent", "kafka-python")
ERRORS = "streamtrain_ingest_dead_letter_errors_total"
REJECTED = 'streamtrain_ingest_rejected_records_total{reason="undecodable"}'
SAMPLES = "streamtrain_ingest_samples_total"
REFUSED_TOPIC = "no such topic!"  # spaces and '!' are not allowed in Kafka topic names


@pytest.mark.parametrize("client", CLIENTS)
def test_a_failed_dead_letter_write_is_counted_and_training_goes_on(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, client: str
) -> None:
    x, y = hyperplane_stream(60, seed=81)
    create_topics(kafka_bootstrap, [f"{unique_name}-snapshots"])
    # a malformed record before samples 0, 10, ... 50: six of them
    valid = produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y, malformed_every=10)
    env = trainer_env(
        kafka_bootstrap,
        unique_name,
        tmp_path / "ckpt",
        {
            "STREAMTRAIN_KAFKA__CLIENT": client,
            "STREAMTRAIN_TOPICS__DEAD_LETTER": REFUSED_TOPIC,
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
        assert len(failures) == 6 and all(REFUSED_TOPIC in line for line in failures), failures
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, output.text()
    assert "Traceback" not in output.text()
