"""The promotion gate on a real trainer and server over the real broker: labels that turn to
noise hold publication (counted, drift detected) while the server keeps the last good version;
with the gate off every snapshot is published."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from streamtrain.builders.server import build_worker
from streamtrain.builders.trainer import build_trainer
from streamtrain.config import Settings
from streamtrain.kafka import KafkaConnection
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.versions import newest_version
from tests.integration.snapshot_harness import wait
from tests.integration.trainer_harness import (
    FEATURES,
    hyperplane_stream,
    pipeline_settings,
    produce_json,
    read_to_the_end,
    stop_on_the_last,
)
from tests.metrics_scrape import Exporter

MODEL = {"name": "linear", "input_shape": [FEATURES], "num_classes": 2}
CLEAN, NOISY = 2400, 2400


def _settings(bootstrap: str, name: str, root: Path, **train: Any) -> Settings:
    return pipeline_settings(
        bootstrap,
        name,
        root,
        ingest={"group_id": f"{name}-group", "max_batch_size": 16, "max_wait_ms": 200},
        model=MODEL,
        optimizer={"name": "sgd", "lr": 0.5},
        train={
            "metric_window": 300,
            "snapshot_every_steps": 10,
            "snapshot_every_seconds": 3600,
            **stop_on_the_last(CLEAN + NOISY),
            **train,
        },
        serve={"port": 0, "model_name": "m"},
    )


def _noisy_stream(kafka_bootstrap: str, topic: str) -> None:
    x, y = hyperplane_stream(CLEAN + NOISY, seed=3)
    y[CLEAN:] = np.random.default_rng(4).integers(0, 2, NOISY)  # labels turn to noise
    produce_json(kafka_bootstrap, topic, x, y)


def _published(settings: Settings) -> int:
    digest = settings_hash(settings.model.model_dump(mode="json"))
    version = newest_version(
        KafkaConnection.from_settings(settings.kafka), settings.topics.snapshots, digest
    )
    return int(version)


def _live_version(url: str) -> str | None:
    body = {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32"}]}
    body["inputs"][0]["data"] = [0.0] * FEATURES  # type: ignore[index]
    response = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=60)  # a hang's bound
    return str(response.json()["model_version"]) if response.status_code == 200 else None


def test_noise_holds_publication_and_the_server_keeps_the_last_good_version(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, trainer_metrics: Exporter
) -> None:
    _noisy_stream(kafka_bootstrap, f"{unique_name}-samples")
    settings = _settings(
        kafka_bootstrap,
        unique_name,
        tmp_path,
        promotion_tolerance=0.1,
        drift_detector="page_hinkley",
    )
    worker = build_worker(settings)
    url = worker.start()
    try:
        start = trainer_metrics.scrape()
        summary = build_trainer(settings).run()
        end = trainer_metrics.scrape()
        read_to_the_end(tmp_path, CLEAN + NOISY)
        published = _published(settings)
        wait(lambda: _live_version(url) == str(published), f"the server at version {published}")
    finally:
        worker.stop()

    def delta(name: str, **labels: str) -> float:
        return (end.value(name, **labels) or 0.0) - (start.value(name, **labels) or 0.0)

    held_total = "streamtrain_train_held_snapshots_total"
    held = delta(held_total, reason="regressed")
    assert delta(held_total, reason="non_finite") == 0, "a finite model held as non-finite"
    # A snapshot is due every 10 steps and once more at the end: each was held by the gate,
    # or offered and then published or superseded by a newer one.
    offered = delta("streamtrain_snapshot_published_total") + delta(
        "streamtrain_snapshot_superseded_total"
    )
    assert held + offered == math.ceil(summary.steps / 10), (held, offered, summary.steps)
    # Every snapshot due after the last published one was held: the labels were noise by then.
    assert held >= (summary.steps - published) // 10 >= 5, (held, published, summary.steps)
    assert delta("streamtrain_train_drift_events_total") >= 1
    # The last published snapshot was taken during the clean part of the stream.
    assert published <= (CLEAN + 16 * 20) // 16 < summary.steps, (published, summary.steps)
    assert summary.rolling_score < 0.7, "the model really was trained on noise at the end"


def test_with_the_gate_off_every_snapshot_is_published(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    _noisy_stream(kafka_bootstrap, f"{unique_name}-samples")
    settings = _settings(kafka_bootstrap, unique_name, tmp_path)
    summary = build_trainer(settings).run()
    read_to_the_end(tmp_path, CLEAN + NOISY)
    assert _published(settings) == summary.steps
