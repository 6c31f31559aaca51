"""kill -9 of one rank of a 2-rank job: torchrun restarts the group, every rank resumes from the
last global checkpoint, and the final model and optimizer equal an uninterrupted 2-rank run's
bit for bit, every sample learned once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.trainer_harness import (
    assert_same_state,
    checkpoint_state,
    hyperplane_stream,
    newest_step,
    produce_json,
    start_trainer,
    trainer_env,
)

SAMPLES = 4000
SETTINGS = {
    "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "16",
    "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": "4.0",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "5",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "3600",
    "STREAMTRAIN_TRAIN__KEEP_CHECKPOINTS": "2",
    "STREAMTRAIN_TRAIN__TORCH_THREADS": "1",
    "STREAMTRAIN_MODEL__PARAMS": '{"hidden_sizes": [16]}',
    "STREAMTRAIN_OPTIMIZER__NAME": "adam",
}


def _env(bootstrap: str, name: str, run: str, root: Path) -> dict[str, str]:
    return trainer_env(
        bootstrap,
        name,
        root,
        {
            **SETTINGS,
            "STREAMTRAIN_INGEST__GROUP_ID": f"{name}-{run}",
            # its own snapshot topic: a fresh run continues the versions found there
            "STREAMTRAIN_TOPICS__SNAPSHOTS": f"{name}-snapshots-{run}",
        },
    )


def _finish(process: subprocess.Popen[str], timeout: float = 300) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"the job did not stop within {timeout} s:\n{output}") from None
    assert process.returncode == 0, output
    return output


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_for_step(root: Path, past: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (step := newest_step(root)) > past:
            return step
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint past step {past} in {root} within {timeout} s")


def test_kill_minus_9_of_a_rank_restarts_the_group_bit_identical(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    x, y = hyperplane_stream(SAMPLES, seed=8)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y, partitions=2)

    reference_dir = tmp_path / "reference"
    _finish(start_trainer(_env(kafka_bootstrap, unique_name, "ref", reference_dir), "--nproc", "2"))
    reference = checkpoint_state(reference_dir)

    crash_dir = tmp_path / "crashing"
    job = start_trainer(
        _env(kafka_bootstrap, unique_name, "crash", crash_dir),
        "--nproc",
        "2",
        "--max-restarts",
        "1",
    )
    killed_at = _wait_for_step(crash_dir, 10, timeout=180)
    workers = _children(job.pid)  # --nproc became torchrun: its children are the two ranks
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    output = _finish(job)

    recovered = checkpoint_state(crash_dir)
    assert output.count("resumed from step") == 2, output  # both ranks of the new group
    assert newest_step(crash_dir) > killed_at
    assert_same_state(reference, recovered)
    assert any(name.startswith("optimizer/") for name in recovered), "optimizer state compared"
    position = recovered["position"]
    assert isinstance(position, dict) and position["samples_seen"] == SAMPLES
    assert position["offsets"] == {"0": SAMPLES // 2, "1": SAMPLES // 2}
