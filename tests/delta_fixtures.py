"""A small row-sparse model trained step by step, and what the delta snapshot tests share:
a model's state, a snapshot request of it, and the snapshots a trainer published."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from streamtrain.config import Settings
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import SampleSpec
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.verify import ReceivedSnapshot
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.row_tracker import RowTracker
from streamtrain.train.snapshot_copy import SnapshotCopier
from streamtrain.train.weights import copy_weights, take_snapshot
from tests.integration.trainer_harness import pipeline_settings, stop_on_the_last
from tests.module_files import load_file

SPEC = SampleSpec(feature_shape=(4,), task="regression")
PARAMS = {"rows": 500, "dim": 8, "id_features": 2}
# By name for a trainer's settings: a test using it asks for the ``examples_on_path`` fixture.
FACTORY = "embedding_model:build_id_embedding"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "embedding_model.py"


@functools.cache
def _example() -> ModuleType:
    """examples/embedding_model.py loaded from its file (``sys.path`` left alone)."""
    return load_file(EXAMPLE, "tests_embedding_model")


def build_model(seed: int = 0, params: dict[str, int] | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    model: torch.nn.Module = _example().build_id_embedding(SPEC, params or PARAMS)
    return model


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every tensor of ``model``'s state, as it is now."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def snapshot_request(
    model: torch.nn.Module, version: int, run_id: str, rows: dict[str, torch.Tensor] | None
) -> SnapshotRequest:
    """What a trainer hands its snapshot writer: ``model``'s weights (only ``rows`` of the
    row-sparse ones, a delta, or all of them with ``None``, a base)."""
    tensors, ready = copy_weights(model, rows)
    return SnapshotRequest(
        version=version,
        run_id=run_id,
        tensors=tensors,
        data_watermark=None,
        offsets={},
        created_at=time.time(),
        wait_ready=ready,
        rows=rows,
    )


# The two sparse features of the ctr tests, one id each.
CTR_SPARSE = [
    {"name": "user", "table": "users", "max_length": 1},
    {"name": "item", "table": "items", "max_length": 1},
]


def one_base_then_deltas(
    bootstrap: str,
    name: str,
    root: Path,
    *,
    model: dict[str, Any],
    batch_size: int,
    optimizer: dict[str, Any],
    snapshot_every_steps: int,
    samples: int,
) -> Settings:
    """Settings of a trainer of a binary ``model`` on 4 dense features (plus what ``model``
    says) in batches of ``batch_size``, that publishes one base and then only deltas (a
    snapshot every ``snapshot_every_steps`` steps) and stops on the stream's last sample (of
    ``samples``; :func:`stop_on_the_last`), and of a server (model ``m``) following them;
    topics of their own (:func:`pipeline_settings`)."""
    return pipeline_settings(
        bootstrap,
        name,
        root,
        model={"task": "binary", "input_shape": [4], **model},
        ingest={"group_id": name, "max_batch_size": batch_size, "max_wait_ms": 20},
        optimizer=optimizer,
        train={
            "snapshot_every_steps": snapshot_every_steps,
            "snapshot_every_seconds": 0.05,
            "base_every_deltas": 1000,
            "torch_threads": 1,
            **stop_on_the_last(samples),
        },
        serve={"port": 0, "model_name": "m", "retain_versions": 1},
        create=("samples", "dlq", "snapshots"),
    )


def newest_after_one_base(settings: Settings) -> int:
    """The newest version a trainer with ``settings`` published, checking that it published
    one base on start and then only deltas (so a server's final weights come from deltas)."""
    subscriber = SnapshotSubscriber(
        kafka=KafkaConnection(settings.kafka.bootstrap_servers),
        topic=settings.topics.snapshots,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
    )
    try:
        published = list(subscriber.newest_first(120.0))  # a scan ends at its deadline
    finally:
        subscriber.close()
    kinds = [s.manifest.kind for s in published]
    assert kinds[0] == "delta" and kinds.count("base") == 1 and len(kinds) > 3, kinds
    return published[0].manifest.version


def sparse_publisher(
    bootstrap: str, topic: str, digest: str, chunk_bytes: int
) -> SnapshotPublisher:
    """A publisher of model ``m``'s snapshots (a :class:`SparseTrainer`'s) to ``topic``, signed
    for the settings hash ``digest``, in chunks of ``chunk_bytes``."""
    return SnapshotPublisher(
        kafka=KafkaConnection(bootstrap),
        topic=topic,
        model_name="m",
        settings_hash=digest,
        chunk_bytes=chunk_bytes,
    )


class SparseTrainer:
    """A model, SGD on sparse gradients, and a RowTracker: what ``streamtrain train`` runs."""

    def __init__(self, base_every_deltas: int = 1000, seed: int = 0) -> None:
        self.model = build_model(seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.tracker = RowTracker(
            self.model,
            self.optimizer,
            base_every_deltas=base_every_deltas,
            base_every_seconds=1e9,
        )
        self.step = 0
        self._gen = torch.Generator().manual_seed(seed + 1)

    def train(self, steps: int = 1, batch: int = 16) -> None:
        for _ in range(steps):
            ids = torch.randint(0, PARAMS["rows"], (batch, 2), generator=self._gen).float()
            x = torch.cat([ids, torch.randn(batch, 2, generator=self._gen)], dim=1)
            loss = (self.model(x) - 1.0).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.step += 1

    def request(self) -> SnapshotRequest:
        return snapshot_request(self.model, self.step, "run-d", self.tracker.take())

    def state(self) -> dict[str, torch.Tensor]:
        return model_state(self.model)


def tracked_request(
    trainer: SparseTrainer, run_id: str, copier: SnapshotCopier | None = None
) -> SnapshotRequest:
    """What the training loop offers its publisher after ``trainer``'s steps: the rows its
    tracker recorded (a delta), or the whole model when a base is due (``take_snapshot``,
    copied in the background by ``copier`` when given)."""
    taken = take_snapshot(trainer.model, trainer.tracker, copier)
    return SnapshotRequest(
        version=trainer.step,
        run_id=run_id,
        tensors=taken.tensors,
        data_watermark=None,
        offsets={},
        created_at=0.0,
        wait_ready=taken.wait_ready,
        rows=taken.rows,
        complete=taken.complete,
    )


def published_snapshots(
    kafka: KafkaConnection, topic: str, settings: str
) -> list[ReceivedSnapshot]:
    """Every snapshot on ``topic``, newest first, read back whole and verified."""
    subscriber = SnapshotSubscriber(kafka=kafka, topic=topic, settings_hash=settings)
    try:
        published = list(subscriber.newest_first(60))
    finally:
        subscriber.close()
    return published
