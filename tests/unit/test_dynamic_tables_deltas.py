"""A dynamic table's mapping travels in snapshots: a base carries it whole, a delta carries the
changed mapping entries as rows beside the changed weight rows, and the serving slot applies
both in one swap, ending bit for bit on the trainer's state (lookups included)."""

from __future__ import annotations

import torch

from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.delta import delta_payload, split_delta
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.row_tracker import RowTracker, row_sparse_buffers, row_sparse_parameters
from streamtrain.train.weights import copy_weights
from tests.unit.test_dynamic_tables import PARAMS, SPEC, _batches, _learner


def _served_slot() -> WeightSlot:
    model = build_model("dlrm", SPEC, PARAMS)
    shared = frozenset(row_sparse_parameters(model)) | frozenset(row_sparse_buffers(model))
    return WeightSlot(model, shared=shared)


def served_after(batches: int, version: int) -> tuple[Learner, WeightSlot, dict[str, torch.Tensor]]:
    """A learner after ``batches`` batches, a slot serving its weights as the base ``version``,
    and that base."""
    learner = _learner()
    for x, y, w, sparse in _batches(batches):
        learner.learn(x, y, w, sparse)
    slot = _served_slot()
    base, _ = copy_weights(learner.model)
    slot.load(base, SnapshotHeader(version, "r"))
    return learner, slot, base


def test_mapping_round_trips_through_a_base_and_deltas_into_the_slot() -> None:
    learner = _learner()
    model = learner.model
    tracker = RowTracker(model, learner.optimizer, base_every_deltas=1000, base_every_seconds=1e9)
    assert "embeddings.mappings.t_items.slot_ids" in row_sparse_buffers(model)
    assert "embeddings.mappings.t_items.filter_counts" in row_sparse_buffers(model)
    slot = _served_slot()
    batches = _batches(40)
    assert tracker.take() is None  # the first snapshot is a base
    base, _ = copy_weights(model)
    slot.load(base, SnapshotHeader(1, "r"))
    previous = "r/1"
    for version, start in enumerate(range(0, 40, 5), start=2):
        for x, y, w, sparse in batches[start : start + 5]:
            learner.learn(x, y, w, sparse)
        rows = tracker.take()
        assert rows is not None, "later snapshots are deltas"
        assert "embeddings.mappings.t_items.slot_ids" in rows
        tensors, _ = copy_weights(model, rows)
        # mapping buffers travel as their changed rows, not whole
        for name in row_sparse_buffers(model):
            assert tensors[name].shape[0] == rows[name].numel(), name
        dense, updates = split_delta(delta_payload(tensors, rows))
        slot.apply_delta(
            dense, updates, SnapshotHeader(version, "r", base_id="r/1", predecessor_id=previous)
        )
        previous = f"r/{version}"
        with slot.acquire() as lease:
            served = lease.model.state_dict()
            for name, tensor in model.state_dict().items():
                assert torch.equal(served[name], tensor), f"{name} after version {version}"
            x, _, _, sparse = batches[start]
            model.eval()
            with torch.no_grad():
                assert torch.equal(lease.model(x, sparse), model(x, sparse))
            model.train()
    assert int(model.embeddings.mappings.t_items.step) == 40


def test_a_late_server_catches_up_from_a_base_with_the_mapping() -> None:
    learner, slot, _ = served_after(20, 20)
    unknown = _batches(1, seed=99)[0]
    learner.model.eval()
    with slot.acquire() as lease, torch.no_grad():
        x, _, _, sparse = unknown
        # IDs the trainer never admitted read the same fallback row on both sides
        assert torch.equal(lease.model(x, sparse), learner.model(x, sparse))
        assert torch.equal(
            lease.model.embeddings.mappings.t_items.slot_ids,
            learner.model.embeddings.mappings.t_items.slot_ids,
        )


def test_the_tracker_lists_the_mapping_buffers_as_row_sparse() -> None:
    model = build_model("dlrm", SPEC, PARAMS)
    tracker = RowTracker(
        model,
        build_optimizer(model.parameters(), "adagrad", lr=0.1),
        base_every_deltas=10,
        base_every_seconds=1e9,
    )
    assert set(row_sparse_buffers(model)) <= set(tracker.names)
