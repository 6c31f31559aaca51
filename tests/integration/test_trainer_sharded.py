"""Row-wise sharded tables on two trainer ranks (torchrun, gloo, CPU) on the real broker.

``ctr`` samples (the stream ``streamtrain produce --dataset ctr`` writes) feed a ``dlrm``
whose ``users`` and ``items`` tables are ``row_wise``: each rank holds half the rows. The job
learns; each rank publishes its own shard of every snapshot, and a server assembling them
(one base, then deltas) ends bit for bit on the trainer's final weights; ``kill -9`` of
rank 1 (or rank 0) and torchrun's restart end bit-identical to an uninterrupted run, every
rank's shard included; a checkpoint of 2 ranks is refused by 1.
(Step-by-step equality with one process: tests/unit/test_row_sharding.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from streamtrain.builders.server import build_worker
from streamtrain.client import SampleProducer
from streamtrain.config import Settings
from streamtrain.datasets.base import SampleChunk
from streamtrain.datasets.ctr import ctr
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.sample.sparse_numpy import Jagged, SparseRows
from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.train.models import build_model
from tests.integration.snapshot_harness import wait
from tests.integration.test_trainer_distributed_recovery import _finish, _two_ranks
from tests.integration.trainer_harness import (
    BACKSTOP_IDLE_S,
    STOP_WHEN_IDLE_S,
    assert_same_state,
    checkpoint_state,
    dlrm_env,
    killed_on_exit,
    latest_checkpoint,
    newest_step,
    pipeline_settings,
    scrape,
    start_trainer,
    trainer_env,
    wait_for_checkpoint_at_least,
    wait_for_metric,
)

ROWS = 1021  # odd: rank 0 holds 511 rows, rank 1 holds 510
SPARSE = [
    {"name": "user", "table": "users", "max_length": 1},
    {"name": "item", "table": "items", "max_length": 1},
]
PARAMS = {
    "rows": ROWS,
    "embedding_dim": 8,
    "bottom_sizes": [16],
    "top_sizes": [16],
    "tables": {"users": {"sharding": "row_wise"}, "items": {"sharding": "row_wise"}},
}
MODEL = {"name": "dlrm", "task": "binary", "input_shape": [4], "sparse": SPARSE, "params": PARAMS}
SHARDED = ("embeddings.tables.t_users.weight", "embeddings.tables.t_items.weight")
DATA = ctr(users=400, items=300)
HELD_OUT = 2000  # the stream's last samples, never produced: its truth is the trained one's


def _stream(samples: int) -> list[SampleChunk]:
    """``samples`` of one ctr stream, then HELD_OUT more (one draw: the same hidden truth)."""
    return list(DATA.iterate(samples + HELD_OUT, seed=4))


def _produce(bootstrap: str, topic: str, samples: int) -> None:
    create_topics(bootstrap, [topic], 2)
    kafka = KafkaConnection(bootstrap)
    sent = 0
    with SampleProducer(spec=DATA.spec, topic=topic, kafka=kafka) as producer:
        for i, chunk in enumerate(_stream(samples)):
            n = min(len(chunk.labels), samples - sent)
            if n <= 0:
                break
            assert chunk.sparse is not None
            producer.send_many(
                chunk.features[:n], chunk.labels[:n], sparse=chunk.sparse[:n], partition=i % 2
            )
            sent += n


def _env(bootstrap: str, name: str, root: Path, run: str, **extra: str) -> dict[str, str]:
    return trainer_env(
        bootstrap,
        name,
        root,
        {
            **dlrm_env(SPARSE, PARAMS),
            "STREAMTRAIN_INGEST__GROUP_ID": f"{name}-{run}",
            "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "64",
            "STREAMTRAIN_TRAIN__TORCH_THREADS": "1",
            "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_STEPS": "5",
            "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": STOP_WHEN_IDLE_S,
            **extra,
        },
    )


def _metrics_urls(job: subprocess.Popen[str]) -> list[str]:
    """Each rank's /metrics URL, in rank order (ports: the base port + local rank)."""
    assert job.stdout is not None
    urls = []
    for line in job.stdout:  # each rank prints its URL once built
        if line.startswith("trainer metrics:"):
            urls.append(line.split()[-1])
            if len(urls) == 2:
                return sorted(urls, key=lambda url: _rank_label(scrape(url)))
    raise AssertionError("the ranks did not print their metrics URLs")


def _rank_label(samples: dict[str, float]) -> str:
    return next(name.split('rank="')[1][0] for name in samples if 'rank="' in name)


def _assembled(root: Path) -> dict[str, torch.Tensor]:
    """The newest checkpoint's model with every sharded table put back together."""
    newest = latest_checkpoint(root)
    shards = [load_file(str(newest / "model.safetensors"))]
    shards.append(load_file(str(newest / "rank-1" / "model.safetensors")))
    out = {k: torch.from_numpy(v.copy()) for k, v in shards[0].items()}
    for name in SHARDED:
        whole = torch.empty(ROWS, 8)
        whole[0::2], whole[1::2] = (torch.from_numpy(s[name].copy()) for s in shards)
        out[name] = whole
    return out


def _log_loss(state: dict[str, torch.Tensor], trained_on: int) -> float:
    """Log loss on the HELD_OUT samples that follow the ``trained_on`` produced ones."""
    model = build_model("dlrm", DATA.spec, PARAMS).eval()  # one process: whole tables
    model.load_state_dict(state)
    chunks = _stream(trained_on)
    features = np.concatenate([c.features for c in chunks])[trained_on:]
    labels_all = np.concatenate([np.asarray(c.labels) for c in chunks])[trained_on:]
    rows = SparseRows.concat([c.sparse for c in chunks if c.sparse is not None])[trained_on:]

    def jagged(rows: Jagged) -> JaggedTensor:
        return JaggedTensor.from_lists(np.split(rows.ids, np.cumsum(rows.lengths)[:-1]))

    sparse = {name: jagged(r) for name, r in rows.features.items()}
    with torch.no_grad():
        logits = model(torch.from_numpy(features), sparse)
    labels = torch.from_numpy(labels_all.astype(np.float32))
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))


def test_sharded_job_learns_and_a_server_follows_it_bit_for_bit(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    name = unique_name
    _produce(kafka_bootstrap, f"{name}-samples", 4000)
    settings = pipeline_settings(
        kafka_bootstrap,
        name,
        tmp_path / "server",
        model=MODEL,
        ingest={"group_id": f"{name}-server"},
        train={"base_every_deltas": 1000},
        serve={"port": 0, "model_name": "ctr", "retain_versions": 1},
        create=("snapshots",),
    )
    worker = build_worker(settings)
    worker.start()
    try:
        env = _env(
            kafka_bootstrap,
            name,
            tmp_path / "ckpt",
            "learn",
            STREAMTRAIN_TRAIN__DELTA_SNAPSHOTS="true",
            STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_STEPS="4",
            STREAMTRAIN_TRAIN__BASE_EVERY_DELTAS="1000",
            # stop on the last sample, not after STOP_WHEN_IDLE_S idle (meta is checked below)
            STREAMTRAIN_TRAIN__MAX_SAMPLES="4000",
            STREAMTRAIN_TRAIN__STOP_WHEN_IDLE=BACKSTOP_IDLE_S,
        )
        with killed_on_exit(start_trainer(env, "--nproc", "2")) as job:
            urls = _metrics_urls(job)
            for rank, url in enumerate(urls):  # each rank sends the other its rows' share
                sent = f'streamtrain_train_alltoall_bytes_total{{rank="{rank}"}}'
                # the group's first steps: wide for a slower, loaded machine
                assert wait_for_metric(url, sent, above=0, timeout=300), scrape(url)
                assert scrape(url)[f'streamtrain_train_alltoall_seconds_count{{rank="{rank}"}}'] > 0
            assert "Traceback" not in _finish(job)
        meta = json.loads((latest_checkpoint(tmp_path / "ckpt") / "meta.json").read_text())
        assert meta["samples_seen"] == 4000 and meta["extra"]["world_size"] == 2
        assert {"rank-1/model.safetensors", "rank-1/optimizer.safetensors"} <= set(meta["files"])
        trained = _assembled(tmp_path / "ckpt")
        torch.manual_seed(0)
        untrained = build_model("dlrm", DATA.spec, PARAMS).state_dict()
        before, after = _log_loss(untrained, 4000), _log_loss(trained, 4000)
        assert after < 0.95 * before, f"held-out log loss {before:.4f} -> {after:.4f}"

        newest = _newest_after_one_base_step(settings)

        def live() -> int | None:
            info = worker.slot.info
            return None if info is None else info.version

        wait(lambda: live() == newest, f"the server on version {newest}", timeout_s=240)
        assert newest == meta["step"]
        with worker.slot.acquire() as lease:
            served = lease.model.state_dict()
        assert served.keys() == trained.keys()
        for key, tensor in trained.items():
            assert torch.equal(served[key], tensor), f"{key} differs from the trainer's"
    finally:
        worker.stop()


def _newest_after_one_base_step(settings: Settings) -> int:
    """The newest version on the topic, checking that every snapshot is one rank's shard,
    every step has both shards of one kind, and there is one base step then deltas."""
    subscriber = SnapshotSubscriber(
        kafka=KafkaConnection(settings.kafka.bootstrap_servers),
        topic=settings.topics.snapshots,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
    )
    try:
        # the scan ends at its deadline with what it found, so a short one can cut a step's
        # two shards apart on a loaded machine (seen once in CI at 30 s): wide, not tight
        published = [s.manifest for s in subscriber.newest_first(180.0)]
    finally:
        subscriber.close()
    steps: dict[int, dict[int, str]] = {}
    for manifest in published:
        assert manifest.shard is not None and manifest.shard.world == 2, manifest
        assert set(manifest.shard.tables) == set(SHARDED)
        if manifest.shard.index == 1:  # rank 1 publishes its rows and nothing else
            assert {t.name.removesuffix("@rows") for t in manifest.tensors} == set(SHARDED)
        steps.setdefault(manifest.version, {})[manifest.shard.index] = manifest.kind
    assert all(sorted(kinds) == [0, 1] for kinds in steps.values()), steps
    assert all(len(set(kinds.values())) == 1 for kinds in steps.values()), steps
    kinds = [steps[v][0] for v in sorted(steps, reverse=True)]
    assert kinds[0] == "delta" and kinds.count("base") == 1 and len(kinds) > 3, kinds
    return max(steps)


def _sharded_state(root: Path) -> dict[str, object]:
    """``checkpoint_state`` plus rank 1's own model and optimizer files."""
    state = checkpoint_state(root)
    rank1 = latest_checkpoint(root) / "rank-1"
    for file in sorted(rank1.glob("*.safetensors")):
        for key, tensor in load_file(str(file)).items():
            state[f"rank-1/{file.stem}/{key}"] = tensor
    state["rank-1/optimizer.json"] = json.loads((rank1 / "optimizer.json").read_text())
    return state


KILL_SAMPLES = 3000
# The kill runs stop on the stream's last sample rather than after STOP_WHEN_IDLE_S idle (a
# stall cannot end them early; the backstop only ends a run that never gets there).
KILL_SETTINGS = {
    "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "16",
    "STREAMTRAIN_TRAIN__MAX_SAMPLES": str(KILL_SAMPLES),
    "STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": BACKSTOP_IDLE_S,
}


@pytest.fixture(scope="module")
def sharded_reference(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, object]]:
    """One stream and its uninterrupted 2-rank run, for both kill cases (the batches are a
    function of the log, so one reference serves every run over it): the stream's name and
    the run's checkpointed state."""
    name = f"sharded-kill-{uuid.uuid4().hex[:8]}"
    _produce(kafka_bootstrap, f"{name}-samples", KILL_SAMPLES)
    reference_dir = tmp_path_factory.mktemp("sharded-reference")
    env = _env(
        kafka_bootstrap,
        name,
        reference_dir,
        "ref",
        **KILL_SETTINGS,
        STREAMTRAIN_TOPICS__SNAPSHOTS=f"{name}-snapshots-ref",
    )
    with killed_on_exit(start_trainer(env, "--nproc", "2")) as job:
        assert "Traceback" not in _finish(job)
    state = _sharded_state(reference_dir)
    position = state["position"]
    assert isinstance(position, dict) and position["samples_seen"] == KILL_SAMPLES
    return name, state


@pytest.mark.parametrize("killed", [1, 0])  # 1: a shard only it holds; 0: the committer
def test_kill_minus_9_of_a_rank_is_bit_identical_and_another_world_is_refused(
    killed: int,
    kafka_bootstrap: str,
    sharded_reference: tuple[str, dict[str, object]],
    tmp_path: Path,
) -> None:
    name, reference = sharded_reference
    crash_dir = tmp_path / "crashing"
    # its own group and snapshots topic on the shared stream
    extra: dict[str, Any] = {
        **KILL_SETTINGS,
        "STREAMTRAIN_TOPICS__SNAPSHOTS": f"{name}-snapshots-crash-{killed}",
    }
    env = _env(kafka_bootstrap, name, crash_dir, f"crash-{killed}", **extra)
    with killed_on_exit(start_trainer(env, "--nproc", "2", "--max-restarts", "1")) as job:
        # the start-up of torchrun, two ranks and their group: wide for a slower, loaded machine
        killed_at = wait_for_checkpoint_at_least(crash_dir, 11, timeout=400)
        os.kill(_two_ranks(job)[killed], signal.SIGKILL)
        output = _finish(job)  # the surviving rank's failed collective logs a traceback
    assert output.count("resumed from step") == 2, output
    assert newest_step(crash_dir) > killed_at
    recovered = _sharded_state(crash_dir)
    assert any(k.startswith("rank-1/optimizer/") for k in recovered), "rank 1's rows compared"
    assert_same_state(reference, recovered)
    position = recovered["position"]
    assert isinstance(position, dict) and position["samples_seen"] == KILL_SAMPLES

    # one rank cannot resume a checkpoint of two: refused in one line, nothing learned
    job = start_trainer(_env(kafka_bootstrap, name, crash_dir, f"crash-{killed}", **extra))
    output, _ = job.communicate(timeout=300)
    assert job.returncode != 0
    assert "was written by 2 trainer rank(s) but 1 are running" in output, output
    assert "Traceback" not in output, output
