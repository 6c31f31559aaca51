"""Semantics 1: after kill -9 at any point the recovered model equals an uninterrupted run's."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import numpy as np

from tests.integration.trainer_harness import (
    checkpoint_meta,
    checkpoint_weights,
    hyperplane_stream,
    produce_json,
    start_trainer,
    trainer_env,
    wait_for_metric,
)

# Batches are cut by size alone (max wait far above any fetch gap), so the same stream yields
# the same batches in every run; the checkpoint is frequent so kills land between and inside.
DETERMINISTIC = {
    "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "32",
    "STREAMTRAIN_INGEST__MAX_WAIT_MS": "1500",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "7",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "3600",
    "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": "3.0",
    "STREAMTRAIN_TRAIN__KEEP_CHECKPOINTS": "2",
    "STREAMTRAIN_MODEL__PARAMS": '{"hidden_sizes": [32], "dropout": 0.1}',
    "STREAMTRAIN_OPTIMIZER__NAME": "adam",
}


def _run_to_end(env: dict[str, str]) -> str:
    process = start_trainer(env)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return output


def _newest_step(root: Path) -> int:
    steps = [int(p.parent.name.split("-")[1]) for p in root.glob("step-*/meta.json")]
    return max(steps, default=-1)


def _wait_for_checkpoint_after(root: Path, step: int, timeout: float) -> int:
    """Wait until this run has written a checkpoint newer than ``step``: it is training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newest = _newest_step(root)
        if newest > step:
            return newest
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint after step {step} within {timeout} s")


def test_kill_minus_9_recovers_bit_identical_model(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    x, y = hyperplane_stream(6000, seed=3)
    valid = produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y, malformed_every=97)

    reference_dir = tmp_path / "reference"
    reference = trainer_env(
        kafka_bootstrap,
        unique_name,
        reference_dir,
        {**DETERMINISTIC, "STREAMTRAIN_INGEST__GROUP_ID": f"{unique_name}-ref"},
    )
    _run_to_end(reference)

    crash_dir = tmp_path / "crashing"
    crashing = trainer_env(kafka_bootstrap, unique_name, crash_dir, DETERMINISTIC)
    rng = random.Random(7)
    killed_after: list[int] = []
    for _ in range(3):
        process = start_trainer(crashing)
        killed_after.append(_wait_for_checkpoint_after(crash_dir, _newest_step(crash_dir), 60))
        time.sleep(rng.uniform(0.0, 0.3))  # a random kill point, not synchronisation
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert killed_after == sorted(set(killed_after)), "each run resumed and made progress"
    _run_to_end(crashing)

    expected, actual = checkpoint_weights(reference_dir), checkpoint_weights(crash_dir)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert np.array_equal(expected[name], actual[name]), f"{name} differs after recovery"
    assert checkpoint_meta(crash_dir)["samples_seen"] == valid
    assert checkpoint_meta(reference_dir)["samples_seen"] == valid


def test_sigterm_writes_final_checkpoint_and_exits_zero(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    x, y = hyperplane_stream(3000, seed=4)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y)
    root = tmp_path / "ckpt"
    env = trainer_env(
        kafka_bootstrap,
        unique_name,
        root,
        {
            "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "16",
            "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "100000",
            "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "3600",
        },
    )
    process = start_trainer(env)
    assert process.stdout is not None
    url = ""
    for line in process.stdout:  # the metrics line is printed once the trainer is built
        if "trainer metrics" in line:
            url = line.split()[-1]
            break
    assert url, "trainer never printed its metrics URL"
    assert wait_for_metric(url, "streamtrain_train_steps_total", above=5, timeout=60)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "stopped (signal)" in output
    meta = checkpoint_meta(root)
    offsets = meta["offsets"]
    assert isinstance(offsets, dict) and set(offsets) == {"0"}
    assert isinstance(meta["samples_seen"], int)
    assert meta["samples_seen"] > 5 * 16 - 16
    assert int(offsets["0"]) >= meta["samples_seen"]
