"""kill -9 of one rank of a 2-rank job (the leader, then a follower): torchrun restarts the
group, every rank resumes from the last global checkpoint, and the final model and optimizer
equal an uninterrupted 2-rank run's bit for bit, every sample learned once. And kill -9 of
torchrun itself leaves no rank behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.trainer_harness import (
    BACKSTOP_IDLE_S,
    STOP_WHEN_IDLE_S,
    assert_same_state,
    checkpoint_state,
    child_pids,
    hyperplane_stream,
    killed_on_exit,
    newest_step,
    pid_alive,
    produce_json,
    start_trainer,
    trainer_env,
    wait_for_checkpoint_at_least,
)

SAMPLES = 4000
SETTINGS = {
    "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "16",
    "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": STOP_WHEN_IDLE_S,
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "5",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "3600",
    "STREAMTRAIN_TRAIN__KEEP_CHECKPOINTS": "2",
    "STREAMTRAIN_TRAIN__TORCH_THREADS": "1",
    "STREAMTRAIN_MODEL__PARAMS": '{"hidden_sizes": [16]}',
    "STREAMTRAIN_OPTIMIZER__NAME": "adam",
}


def _env(bootstrap: str, name: str, run: str, root: Path, **extra: str) -> dict[str, str]:
    return trainer_env(
        bootstrap,
        name,
        root,
        {
            **SETTINGS,
            "STREAMTRAIN_INGEST__GROUP_ID": f"{name}-{run}",
            # its own snapshot topic: a fresh run continues the versions found there
            "STREAMTRAIN_TOPICS__SNAPSHOTS": f"{name}-snapshots-{run}",
            **extra,
        },
    )


def _finish(process: subprocess.Popen[str], timeout: float = 400) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the job did not stop within {timeout} s") from None
    assert process.returncode == 0, output
    return output


def _two_ranks(job: subprocess.Popen[str], timeout: float = 60) -> dict[int, int]:
    """Rank -> pid of the ranks torchrun (which ``--nproc`` became, same pid) has started."""
    deadline = time.monotonic() + timeout
    while len(pids := child_pids(job.pid)) != 2:
        assert time.monotonic() < deadline, f"torchrun's ranks: {pids}"
        time.sleep(0.05)
    ranks = {}
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(v for v in environ if v.startswith(b"RANK="))
        ranks[int(rank.partition(b"=")[2])] = pid
    assert sorted(ranks) == [0, 1], ranks
    return ranks


def test_kill_minus_9_of_a_rank_restarts_the_group_bit_identical(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    x, y = hyperplane_stream(SAMPLES, seed=8)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y, partitions=2)

    reference_dir = tmp_path / "reference"
    # Each run stops on the stream's last sample rather than after STOP_WHEN_IDLE_S idle (a
    # stall cannot end it early; the backstop idle stop only ends a run that never gets there).
    until_learned = {
        "STREAMTRAIN_TRAIN__MAX_SAMPLES": str(SAMPLES),
        "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": BACKSTOP_IDLE_S,
    }
    reference_env = _env(kafka_bootstrap, unique_name, "ref", reference_dir, **until_learned)
    with killed_on_exit(start_trainer(reference_env, "--nproc", "2")) as job:
        _finish(job)
    reference = checkpoint_state(reference_dir)

    # Rank 0 is the leader, which writes checkpoints; rank 1 a follower, whose death the
    # leader learns of only through the collective it waits in.
    for rank in (0, 1):
        crash_dir = tmp_path / f"crashing-{rank}"
        crash_env = _env(kafka_bootstrap, unique_name, f"crash-{rank}", crash_dir, **until_learned)
        job = start_trainer(crash_env, "--nproc", "2", "--max-restarts", "1")
        with killed_on_exit(job):
            # the start-up of torchrun, two ranks and their group: wide for a slower, loaded machine
            killed_at = wait_for_checkpoint_at_least(crash_dir, 11, timeout=400)
            os.kill(_two_ranks(job)[rank], signal.SIGKILL)
            output = _finish(job)

        recovered = checkpoint_state(crash_dir)
        assert output.count("resumed from step") == 2, output  # both ranks of the new group
        assert newest_step(crash_dir) > killed_at
        assert_same_state(reference, recovered)
        assert any(name.startswith("optimizer/") for name in recovered), "optimizer compared"
        position = recovered["position"]
        assert isinstance(position, dict) and position["samples_seen"] == SAMPLES
        assert position["offsets"] == {"0": SAMPLES // 2, "1": SAMPLES // 2}


def test_kill_minus_9_of_torchrun_leaves_no_rank_running(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    x, y = hyperplane_stream(400, seed=9)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y, partitions=2)
    root = tmp_path / "orphans"
    # idle for a long time rather than stop: the ranks are alive when torchrun dies
    env = _env(kafka_bootstrap, unique_name, "agent", root, STREAMTRAIN_TRAIN__STOP_WHEN_IDLE="600")
    with killed_on_exit(start_trainer(env, "--nproc", "2")) as job:
        wait_for_checkpoint_at_least(root, 1, timeout=400)
        ranks = list(_two_ranks(job).values())
        job.send_signal(signal.SIGKILL)
        job.communicate(timeout=120)
        deadline = time.monotonic() + 30
        while alive := [r for r in ranks if pid_alive(r)]:
            assert time.monotonic() < deadline, f"ranks {alive} outlived torchrun"
            time.sleep(0.05)
