"""The trainer loop's version rules (``train/loop.py`` semantics 3 and 4): nothing is published
before a sample is learned, and a run that has learned nothing numbers strictly above the
newest version ``first_version`` reports, even when it resumes a rejects-only checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from streamtrain.checkpoint import CheckpointStore
from streamtrain.sample.batch import Batch
from streamtrain.sample.spec import SampleSpec
from streamtrain.train.cadence import EveryPolicy
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.learner import Learner
from streamtrain.train.loop import StopConditions, Trainer, TrainSummary
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead

SPEC = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)


class ScriptedSource:
    """Hands out ``batches`` in order, then empty batches at the last position."""

    def __init__(self, batches: list[Batch]) -> None:
        self._batches = list(batches)
        self._position = {0: 0}

    def next_batch(self) -> Batch:
        if not self._batches:
            return Batch.empty(self._position)
        batch = self._batches.pop(0)
        self._position = dict(batch.next_offsets)
        return batch

    topic_id: str | None = None  # no broker: no topic id (relog, issue 23)

    def seek(self, offsets: Mapping[int, int]) -> None:
        self._position = dict(offsets)

    def resume(
        self, offsets: Mapping[int, int], marks: Mapping[int, object], stored_topic_id: object
    ) -> None:
        self.seek(offsets)

    def positions(self) -> dict[int, int]:
        return dict(self._position)

    def commit(self, offsets: Mapping[int, int]) -> None:
        return None

    def close(self) -> None:
        return None


class Sink:
    def __init__(self) -> None:
        self.versions: list[int] = []

    def offer(self, request: SnapshotRequest) -> None:
        self.versions.append(request.version)

    def close(self) -> None:
        return None


def _samples(end: int, count: int) -> Batch:
    x = np.random.default_rng(end).normal(size=(count, 4)).astype(np.float32)
    return Batch(
        features=x,
        labels=x[:, :3].argmax(axis=1).astype(np.int64),
        weights=np.ones(count, np.float32),
        timestamps=np.zeros(count, np.float64),
        next_offsets={0: end},
        records=count,
    )


def _run(root: Path, batches: list[Batch], first_version: int) -> tuple[TrainSummary, Sink]:
    torch.manual_seed(0)
    model = build_model("mlp", SPEC, {"hidden_sizes": [8]})
    learner = Learner(model, TaskHead(SPEC), build_optimizer(model.parameters(), "sgd", lr=0.1))
    sink = Sink()
    lookups = []

    def newest() -> int:
        lookups.append(first_version)
        return first_version

    trainer = Trainer(
        source=ScriptedSource(batches),
        learner=learner,
        checkpoints=CheckpointStore(root),
        snapshot_sink=sink,
        model_settings={"name": "mlp"},
        snapshot_policy=EveryPolicy(1, 1e9),
        checkpoint_policy=EveryPolicy(1000, 1e9),
        prefetch_depth=1,
        stop=StopConditions(stop_when_idle=0.3),
        first_version=newest,
    )
    return trainer.run(), sink


def test_a_run_of_rejects_only_publishes_nothing_but_checkpoints_its_position(
    tmp_path: Path,
) -> None:
    rejects = Batch.empty({0: 5}, records=5)
    summary, sink = _run(tmp_path, [rejects], first_version=13)
    assert sink.versions == [], "untrained weights are never offered"
    assert (summary.steps, summary.samples_seen, summary.records_rejected) == (13, 0, 5)
    model = build_model("mlp", SPEC, {"hidden_sizes": [8]})
    optimizer = build_optimizer(model.parameters(), "sgd", lr=0.1)
    state = CheckpointStore(tmp_path).load_latest(model, optimizer, None)
    assert state is not None and state.offsets == {0: 5} and state.samples_seen == 0


def test_a_new_run_numbers_strictly_above_the_topic(tmp_path: Path) -> None:
    summary, sink = _run(tmp_path, [_samples(4, 4), _samples(8, 4)], first_version=13)
    assert sink.versions == [14, 15]
    assert summary.optimizer_updates >= 2 and summary.samples_seen == 8


def test_a_rejects_only_checkpoint_resumes_above_a_topic_that_moved_on(tmp_path: Path) -> None:
    _run(tmp_path, [Batch.empty({0: 5}, records=5)], first_version=13)
    _, sink = _run(tmp_path, [_samples(9, 4)], first_version=40)  # another run published to 40
    assert sink.versions == [41]


def test_a_checkpoint_that_learned_keeps_its_own_step(tmp_path: Path) -> None:
    _run(tmp_path, [_samples(4, 4)], first_version=13)  # learned: step 14, checkpointed
    _, sink = _run(tmp_path, [_samples(8, 4)], first_version=40)
    assert sink.versions == [15], "a replay after a crash rebuilds the same versions"
