"""A quiet trainer still publishes and checkpoints its last steps, then writes nothing more."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from streamtrain import health, metrics
from streamtrain.builders.trainer import build_trainer
from streamtrain.train.progress import TrainSummary
from tests.integration.process_output import REQUEST_S
from tests.integration.trainer_harness import (
    FEATURES,
    checkpoint_meta,
    hyperplane_stream,
    pipeline_settings,
    produce_json,
    scrape,
)
from tests.threads import Workers

BURST = 640  # 20 steps of 32: under both step thresholds, so only the timers can fire


def _settings(bootstrap: str, name: str, root: Path) -> Any:
    return pipeline_settings(
        bootstrap,
        name,
        root,
        ingest={"group_id": f"{name}-group", "max_batch_size": 32, "max_wait_ms": 200},
        model={"name": "linear", "input_shape": [FEATURES], "num_classes": 2},
        optimizer={"name": "sgd", "lr": 0.5},
        train={
            "snapshot_every_steps": 1000,
            "snapshot_every_seconds": 1.0,
            "checkpoint_every_steps": 1000,
            "checkpoint_every_seconds": 2.0,
        },
    )


def _await(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.1)


def _checkpoints(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").exists())


def test_burst_then_silence_publishes_and_checkpoints_then_stays_quiet(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    x, y = hyperplane_stream(BURST, seed=4)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y)
    trainer = build_trainer(_settings(kafka_bootstrap, unique_name, tmp_path))
    server = metrics.serve_metrics(
        metrics.TRAINER_REGISTRY, 0, host="127.0.0.1", routes=health.routes()
    )
    base = f"http://127.0.0.1:{server.server_port}"
    before = scrape(base + "/metrics")
    result: list[TrainSummary] = []
    worker = Workers()  # the trainer's own exception, if any, fails the test at join
    worker.start(lambda: result.append(trainer.run()))

    def delta(name: str) -> float:
        return scrape(base + "/metrics").get(name, 0.0) - before.get(name, 0.0)

    try:
        _await("20 steps", lambda: delta("streamtrain_train_samples_total") >= BURST, 120)
        _await(
            "a snapshot of step 20",
            lambda: (
                delta("streamtrain_snapshot_published_total") > 0
                and scrape(base + "/metrics").get("streamtrain_snapshot_version") == 20
            ),
            60,
        )
        _await(
            "a checkpoint of 640 samples",
            lambda: (
                bool(_checkpoints(tmp_path)) and checkpoint_meta(tmp_path)["samples_seen"] == BURST
            ),
            60,
        )
        meta = checkpoint_meta(tmp_path)
        assert meta["step"] == 20 and meta["offsets"] == {"0": BURST}
        ready = httpx.get(base + "/health/ready", timeout=REQUEST_S)
        assert ready.status_code == 200, ready.text
        assert httpx.get(base + "/health/live", timeout=REQUEST_S).status_code == 200

        # Idle with nothing new, watched for three checkpoint periods: no snapshot, no
        # checkpoint, nothing at stake, and the loop stays live.
        published = delta("streamtrain_snapshot_published_total")
        written = _checkpoints(tmp_path)
        watch_until = time.monotonic() + 6.0
        while time.monotonic() < watch_until:
            assert delta("streamtrain_snapshot_published_total") == published
            assert _checkpoints(tmp_path) == written
            assert scrape(base + "/metrics")["streamtrain_checkpoint_age_seconds"] == 0.0
            assert httpx.get(base + "/health/live", timeout=REQUEST_S).status_code == 200
            time.sleep(0.25)
        assert worker.alive and not worker.failed
    finally:
        trainer.request_stop()
        worker.join(60)
        server.shutdown()
    assert result and result[0].samples_seen == BURST and result[0].stop_reason == "signal"
