"""Two trainer ranks (torchrun, gloo, CPU) on the real broker train one model.

Each rank reads its own partitions; the job's checkpoint is one cut holding every partition's
offset; rank 0 alone publishes snapshots; another world size is refused on restart, and more
ranks than partitions are refused at startup.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from streamtrain.kafka import KafkaConnection, partition_reader
from streamtrain.snapshot.versions import _manifest
from tests.integration.trainer_harness import (
    STOP_WHEN_IDLE_S,
    checkpoint_meta,
    hyperplane_stream,
    produce_json,
    scrape,
    start_trainer,
    trainer_env,
)

SAMPLES = 1200
SETTINGS = {
    "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "32",
    "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": STOP_WHEN_IDLE_S,
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "10",
    "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "3600",
    "STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_STEPS": "5",
    "STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_SECONDS": "3600",
    "STREAMTRAIN_TRAIN__TORCH_THREADS": "1",
    "STREAMTRAIN_MODEL__PARAMS": '{"hidden_sizes": [16]}',
}


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, str]:
    process = start_trainer(env, *args)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"trainer did not stop within {timeout} s:\n{output}") from None
    return process.returncode, output


@pytest.fixture()
def two_partition_stream(kafka_bootstrap: str, tmp_path: Path) -> tuple[dict[str, str], str]:
    name = f"dist-{tmp_path.name}"
    x, y = hyperplane_stream(SAMPLES, seed=5)
    produce_json(kafka_bootstrap, f"{name}-samples", x, y, partitions=2)
    env = trainer_env(kafka_bootstrap, name, tmp_path / "checkpoints", SETTINGS)
    return env, name


def test_two_ranks_learn_every_sample_once_and_checkpoint_one_cut(
    kafka_connection: KafkaConnection,
    two_partition_stream: tuple[dict[str, str], str],
    tmp_path: Path,
) -> None:
    env, name = two_partition_stream
    job = start_trainer(env, "--nproc", "2")
    assert job.stdout is not None
    urls = []
    for line in job.stdout:  # each rank prints its metrics URL once built
        if line.startswith("trainer metrics:"):
            urls.append(line.split()[-1])
            if len(urls) == 2:
                break
    # every rank serves its metrics on its own port, each sample labelled with its rank
    ranks = {_rank_of(url) for url in urls}
    assert ranks == {"0", "1"}
    rest, _ = job.communicate(timeout=300)
    output = rest
    assert job.returncode == 0, output
    meta = checkpoint_meta(tmp_path / "checkpoints")
    assert meta["samples_seen"] == SAMPLES, output
    assert meta["offsets"] == {"0": SAMPLES // 2, "1": SAMPLES // 2}
    assert meta["extra"] == {"world_size": 2}
    # every rank stopped with the same step count, the job's
    steps = [line for line in output.splitlines() if line.startswith("stopped (idle)")]
    assert len(steps) == 2, output
    assert {line.split(" at step ")[1].split(":")[0] for line in steps} == {str(meta["step"])}
    # rank 0 alone published: one increasing sequence of versions, up to the last step
    versions = _published_versions(kafka_connection, f"{name}-snapshots")
    assert versions == sorted(set(versions)), versions
    assert versions[-1] == meta["step"]

    # the same checkpoint with another world size is refused, in one line, before training
    code, output = _run(env)
    assert code != 0
    assert "was written by 2 trainer rank(s) but 1 are running" in output, output
    assert "Traceback" not in output


def test_more_ranks_than_partitions_is_refused(
    two_partition_stream: tuple[dict[str, str], str],
) -> None:
    env, _ = two_partition_stream
    code, output = _run(env, "--nproc", "3", timeout=240)
    assert code != 0
    assert "3 trainer ranks but the samples topic has 2 partition(s)" in output, output
    assert "Traceback" not in output, output


def _rank_of(url: str, timeout: float = 120) -> str:
    """The rank label of ``url``'s samples, once that rank has trained and all-reduced."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scraped = scrape(url)
        trained = [
            k
            for k, v in scraped.items()
            if k.startswith("streamtrain_train_optimizer_updates_total")
        ]
        if trained and scraped[trained[0]] > 0:
            assert len(trained) == 1, trained
            rank = trained[0].split('rank="')[1].split('"')[0]
            reduced = f'streamtrain_train_allreduce_seconds_count{{rank="{rank}"}}'
            assert scraped[reduced] > 0, scraped
            assert all('rank="' in k for k in scraped), "every sample carries the rank"
            return rank
        time.sleep(0.1)
    raise AssertionError(f"{url}: no step within {timeout} s")


def _published_versions(kafka: KafkaConnection, topic: str) -> list[int]:
    deadline = time.monotonic() + 30
    reader = partition_reader(kafka, topic=topic)
    try:
        low, end = reader.bounds(deadline)
        return [
            manifest.version
            for record in reader.read(low, end, deadline)
            if (manifest := _manifest(record)) is not None
        ]
    finally:
        reader.close()
