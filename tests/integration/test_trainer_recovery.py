"""Semantics 1: after kill -9 at any point the recovered model equals an uninterrupted run's."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from tests.integration.trainer_harness import (
    assert_same_state,
    checkpoint_meta,
    checkpoint_state,
    hyperplane_stream,
    produce_json,
    start_trainer,
    trainer_env,
    wait_for_metric,
)

# Deterministic batching (the default) makes the batches a function of the log even with the
# default 50 ms max wait and several partitions; the checkpoint is frequent so kills land
# between and inside checkpoint writes.
DETERMINISTIC = {
    "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "32",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "7",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "3600",
    "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": "3.0",
    "STREAMTRAIN_TRAIN__KEEP_CHECKPOINTS": "2",
    "STREAMTRAIN_MODEL__PARAMS": '{"hidden_sizes": [32], "dropout": 0.1}',
    "STREAMTRAIN_OPTIMIZER__NAME": "adam",
}


def _run_to_end(env: dict[str, str]) -> str:
    process = start_trainer(env)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    return output


def _newest_step(root: Path) -> int:
    steps = [int(p.parent.name.split("-")[1]) for p in root.glob("step-*/meta.json")]
    return max(steps, default=-1)


def _wait_for_checkpoint_at_least(root: Path, step: int, timeout: float) -> int:
    """Wait until this run has written a checkpoint at ``step`` or later: it is training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newest = _newest_step(root)
        if newest >= step:
            return newest
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step {step} or later within {timeout} s")


def _kill_steps(rng: random.Random, total_steps: int, kills: int) -> list[int]:
    """``kills`` random steps spread over the stream, each in its own slice of it.

    Kill points are chosen by step rather than by time: a fast machine would otherwise finish
    the whole stream between two timed kills and leave nothing to recover.
    """
    width = total_steps // (kills + 1)
    return [(i + 1) * width + rng.randint(-width // 3, width // 3) for i in range(kills)]


@pytest.mark.parametrize(("partitions", "kills"), [(1, 3), (3, 5)])
def test_kill_minus_9_recovers_bit_identical_model_and_optimizer(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, partitions: int, kills: int
) -> None:
    x, y = hyperplane_stream(6000, seed=3)
    valid = produce_json(
        kafka_bootstrap, f"{unique_name}-samples", x, y, malformed_every=97, partitions=partitions
    )

    references = []
    for run in ("a", "b"):
        root = tmp_path / f"reference-{run}"
        env = {
            **DETERMINISTIC,
            "STREAMTRAIN_INGEST__GROUP_ID": f"{unique_name}-ref-{run}",
            # Its own snapshot topic: a fresh run continues the versions found there.
            "STREAMTRAIN_TOPICS__SNAPSHOTS": f"{unique_name}-snapshots-{run}",
        }
        _run_to_end(trainer_env(kafka_bootstrap, unique_name, root, env))
        references.append(checkpoint_state(root))
    assert_same_state(references[0], references[1])  # two uninterrupted runs agree

    crash_dir = tmp_path / "crashing"
    crashing = trainer_env(kafka_bootstrap, unique_name, crash_dir, DETERMINISTIC)
    rng = random.Random(7 + partitions)
    total_steps = checkpoint_meta(tmp_path / "reference-a")["step"]
    assert isinstance(total_steps, int) and total_steps > 10 * kills
    killed_after: list[int] = []
    for target in _kill_steps(rng, total_steps, kills):
        process = start_trainer(crashing)
        killed_after.append(_wait_for_checkpoint_at_least(crash_dir, target, 90))
        time.sleep(rng.uniform(0.0, 0.02))  # a random point within the next steps
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert killed_after == sorted(set(killed_after)), "each run resumed and made progress"
    assert killed_after[-1] < total_steps, "the last kill landed before the end of the stream"
    _run_to_end(crashing)

    recovered = checkpoint_state(crash_dir)
    assert_same_state(references[0], recovered)
    assert any(name.startswith("optimizer/") for name in recovered), "optimizer state compared"
    position = recovered["position"]
    assert isinstance(position, dict) and position["samples_seen"] == valid
    assert len(position["offsets"]) == partitions


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
    # samples, not steps: a batch may take several optimizer steps (step_samples)
    assert wait_for_metric(url, "streamtrain_train_samples_total", above=5 * 16, timeout=60)
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
