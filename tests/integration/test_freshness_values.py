"""Guarantee 6, by value: the freshness a trainer and a server export is the samples' own time.

Samples are produced with timestamps the test chooses (an hour in the past, so an age taken
from the wrong clock shows): first with a ``timestamp`` in the JSON body, then without one, where
the Kafka record's timestamp stands in (docs/wire-format.md). The trainer's
``streamtrain_train_data_watermark_timestamp_seconds`` must be the newest learned timestamp
exactly; a real ``streamtrain serve`` of the trainer's snapshots must export that same instant as
``streamtrain_serve_data_timestamp_seconds``, and as ``streamtrain_serve_data_age_seconds`` the
wall time of the scrape minus it (bounded by clock readings taken around the scrape).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from streamtrain.kafka import create_topics
from tests.integration.cli_process import await_output, running_cli
from tests.integration.process_output import await_condition
from tests.integration.trainer_harness import hyperplane_stream, scrape, trainer_env

WATERMARK = "streamtrain_train_data_watermark_timestamp_seconds"
# learned, not read: counted after the step that also moves the watermark
SAMPLES = "streamtrain_train_samples_total"
SERVED_AT = "streamtrain_serve_data_timestamp_seconds"
AGE = "streamtrain_serve_data_age_seconds"
BODY_STAMPED = 200  # samples with a JSON timestamp
RECORD_STAMPED = 100  # then samples whose timestamp is the Kafka record's
SETTINGS = {
    "STREAMTRAIN_TRAIN__DEVICE": "cpu",
    "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "32",
    "STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_SECONDS": "0.5",
    "STREAMTRAIN_MODEL__PARAMS": '{"hidden_sizes": [8]}',
}


def _produce(
    bootstrap: str, topic: str, x: np.ndarray, y: np.ndarray, stamps: list[float], in_body: bool
) -> None:
    """One sample per stamp: in the body, or (``in_body`` False) as the record's timestamp only
    (the record timestamp is then whole milliseconds, the body's absent)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for features, label, stamp in zip(x, y, stamps, strict=True):
        body: dict[str, object] = {"features": features.tolist(), "label": int(label)}
        if in_body:
            body["timestamp"] = stamp
        producer.send(
            topic, json.dumps(body).encode(), partition=0, timestamp_ms=round(stamp * 1000)
        )
    producer.flush()
    producer.close()


def _value(url: str, name: str) -> float:
    return scrape(url).get(name, math.nan)


def test_trainer_watermark_and_served_age_follow_the_samples_timestamps(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    topic = f"{unique_name}-samples"
    create_topics(kafka_bootstrap, [topic, f"{unique_name}-snapshots"], 1)
    base = float(int(time.time()) - 3600)  # whole seconds: exact in JSON and in milliseconds
    x, y = hyperplane_stream(BODY_STAMPED + RECORD_STAMPED, seed=61)
    # Not in order: the watermark is the newest timestamp, not the last one read.
    body_stamps = [base + (i * 37) % BODY_STAMPED + 0.25 for i in range(BODY_STAMPED)]
    record_stamps = [base + 1000 + (i * 13) % RECORD_STAMPED for i in range(RECORD_STAMPED)]
    _produce(kafka_bootstrap, topic, x[:BODY_STAMPED], y[:BODY_STAMPED], body_stamps, True)

    env = trainer_env(kafka_bootstrap, unique_name, tmp_path / "ckpt", SETTINGS)
    with running_cli(["train"], env) as (_, trainer_output):
        trainer = await_output(trainer_output, r"trainer metrics: +(\S+)")
        await_condition(lambda: _value(trainer, SAMPLES) >= BODY_STAMPED, "the first samples")
        assert _value(trainer, SAMPLES) == BODY_STAMPED
        assert _value(trainer, WATERMARK) == max(body_stamps)

        rest = slice(BODY_STAMPED, None)
        _produce(kafka_bootstrap, topic, x[rest], y[rest], record_stamps, False)
        total = BODY_STAMPED + RECORD_STAMPED
        await_condition(lambda: _value(trainer, SAMPLES) >= total, "the record-stamped samples")
        assert _value(trainer, SAMPLES) == total
        newest = max(record_stamps)
        assert _value(trainer, WATERMARK) == newest

        serve_env = {**env, "STREAMTRAIN_SERVE__PORT": "0"}
        with running_cli(["serve"], serve_env) as (_, server_output):
            server = await_output(server_output, r"metrics: +GET +(\S+)")
            # Earlier snapshots may hold older watermarks; the newest one carries the last.
            await_condition(lambda: _value(server, SERVED_AT) == newest, "the newest snapshot")
            before = time.time()
            values = scrape(server)
            after = time.time()
            assert values[SERVED_AT] == newest
            age = values[AGE]
            assert before - newest - 1e-3 <= age <= after - newest + 1e-3, (before, age, after)
