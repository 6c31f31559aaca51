"""Regression with the defaults, end to end: targets around 40 come back from the server near 40.

The trainer learns standardised targets (``scale_targets``, on by default); the statistics are
buffers of the model's output layer, so they travel in the snapshot and the real server, which
knows nothing of target scaling, answers in the targets' own units.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np

from streamtrain.builders.server import build_worker
from streamtrain.builders.trainer import build_trainer
from streamtrain.client import SampleProducer
from streamtrain.config import Settings
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import spec_for_model
from tests.integration.process_output import REQUEST_S
from tests.integration.trainer_harness import pipeline_settings

FEATURES = 4
SAMPLES = 1500


def _stream(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets ~40 (std ~4); one raw feature is a date ordinal around 736,400."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, FEATURES)).astype(np.float32)
    x[:, 3] = 736_389 + rng.integers(0, 365, size=count)  # unrelated to the target
    y = 40.0 + 3.0 * x[:, 0] - 2.0 * x[:, 1] + rng.normal(scale=0.2, size=count)
    return x, y.astype(np.float32)[:, None]


def _settings(bootstrap: str, name: str, root: Path) -> Settings:
    return pipeline_settings(
        bootstrap,
        name,
        root,
        ingest={"group_id": name, "start_from": "earliest", "max_batch_size": 16},
        # only the task: model, optimizer and scaling are what a CLI user gets
        model={"task": "regression", "input_shape": [FEATURES]},
        train={
            "max_samples": SAMPLES,
            "stop_when_idle": 30.0,
            "torch_threads": 1,
            "metrics_port": 0,
        },
        serve={"port": 0, "model_name": "m"},
        create=("samples", "dlq", "snapshots"),
    )


def _infer(url: str, rows: np.ndarray, timeout: float = 60.0) -> list[float]:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.flatten().tolist(),
            }
        ]
    }
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=REQUEST_S) as http:
        while True:
            reply = http.post("/v2/models/m/infer", json=body)
            if reply.status_code == 200:
                outputs = {out["name"]: out for out in reply.json()["outputs"]}
                return [float(v) for v in outputs["value"]["data"]]
            assert reply.status_code == 503, reply.text  # 503: no snapshot loaded yet
            assert time.monotonic() < deadline, "the server loaded no snapshot in time"
            time.sleep(0.1)


def test_served_regression_predictions_are_in_the_targets_units(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    settings = _settings(kafka_bootstrap, unique_name, tmp_path)
    x, y = _stream(SAMPLES, seed=3)
    with SampleProducer(
        spec=spec_for_model(settings.model),
        topic=settings.topics.samples,
        kafka=KafkaConnection.from_settings(settings.kafka),
        format="binary",
    ) as producer:
        producer.send_many(x, y)

    summary = build_trainer(settings).run()
    assert summary.samples_seen == SAMPLES
    # the trainer's prequential score is the MAE in target units: near the noise, not ~40
    assert summary.rolling_score < 2.0, summary

    worker = build_worker(settings)
    url = worker.start()
    try:
        probe_x, probe_y = _stream(64, seed=11)
        served = np.asarray(_infer(url, probe_x))
    finally:
        worker.stop()
    truth = probe_y[:, 0]
    assert abs(float(served.mean()) - float(truth.mean())) < 1.5, (served.mean(), truth.mean())
    assert float(np.abs(served - truth).mean()) < 2.0
    assert float(served.min()) > 25.0  # original units: not standardised values near 0
