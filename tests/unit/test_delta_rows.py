"""Touched-row tracking, delta payloads and merging, and the slot applying deltas."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from streamtrain.kafka import KafkaConnection
from streamtrain.serve.weights.inference import head_for
from streamtrain.serve.weights.retained import RetainedVersions
from streamtrain.serve.weights.slot import SnapshotRejected, WeightSlot
from streamtrain.snapshot.delta import DeltaError, delta_payload, merge_requests, split_delta
from streamtrain.snapshot.manifest import SnapshotHeader, SnapshotManifest
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.row_tracker import RowTracker, row_sparse_parameters
from tests.delta_fixtures import SPEC, SparseTrainer, build_model
from tests.manifest_fixtures import placeholder_manifest


def test_first_take_is_a_base_then_deltas_carry_exactly_the_changed_rows() -> None:
    trainer = SparseTrainer()
    assert trainer.tracker.names == ["table.weight"]
    assert trainer.tracker.take() is None  # rule 4: the first snapshot is a base
    before = trainer.state()["table.weight"]
    trainer.train(steps=3)
    rows = trainer.tracker.take()
    assert rows is not None
    after = trainer.state()["table.weight"]
    changed = torch.nonzero((after != before).any(dim=1)).flatten()
    # Every changed row is tracked; a tracked row may have moved by exactly zero, no more.
    assert set(changed.tolist()) <= set(rows["table.weight"].tolist())
    assert len(rows["table.weight"]) < before.shape[0]


def test_base_every_n_deltas() -> None:
    trainer = SparseTrainer(base_every_deltas=2)
    kinds = []
    for _ in range(6):
        trainer.train()
        kinds.append("base" if trainer.tracker.take() is None else "delta")
    assert kinds == ["base", "delta", "delta", "base", "delta", "delta"]


def test_a_change_outside_an_optimizer_step_forces_a_base() -> None:
    trainer = SparseTrainer()
    trainer.tracker.take()
    trainer.train()
    with torch.no_grad():
        trainer.model.table.weight[3] += 1.0  # a rollback, a checkpoint load, user code
    assert trainer.tracker.take() is None


def test_dense_gradient_on_a_declared_row_sparse_parameter_forces_a_base() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 3))  # sparse=False: dense gradients
    model.row_sparse_parameters = ["0.weight"]  # type: ignore[attr-defined]
    assert list(row_sparse_parameters(model)) == ["0.weight"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = RowTracker(model, optimizer, base_every_deltas=10, base_every_seconds=1e9)
    tracker.take()
    model(torch.tensor([1, 2])).sum().backward()
    optimizer.step()
    assert tracker.take() is None


def test_dense_only_models_always_publish_bases() -> None:
    model = torch.nn.Linear(3, 1)
    tracker = RowTracker(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        base_every_deltas=10,
        base_every_seconds=1e9,
    )
    assert [tracker.take() for _ in range(3)] == [None, None, None]


def test_unknown_declared_parameter_is_a_clear_error() -> None:
    model = torch.nn.Linear(3, 1)
    model.row_sparse_parameters = ["nope"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="does not have"):
        row_sparse_parameters(model)


def test_merged_requests_equal_publishing_both() -> None:
    trainer = SparseTrainer()
    base = trainer.request()
    trainer.train(2)
    first = trainer.request()
    trainer.train(2)
    second = trainer.request()
    union = merge_requests(first, second)
    assert union.rows is not None and union.version == second.version
    full = trainer.state()
    index = union.rows["table.weight"]
    assert torch.equal(union.tensors["table.weight"], full["table.weight"][index])
    rebuilt = merge_requests(base, union)
    assert rebuilt.rows is None
    rebuilt.wait_ready()  # a base's merge completes on the sink's thread (delta.py)
    for name, tensor in full.items():
        assert torch.equal(rebuilt.tensors[name], tensor), name


def test_split_delta_refuses_unpaired_or_mismatched_rows() -> None:
    with pytest.raises(DeltaError, match="no values"):
        split_delta({"t@rows": torch.tensor([1])})
    with pytest.raises(DeltaError, match="2 indices"):
        split_delta(delta_payload({"t": torch.ones(3, 2)}, {"t": torch.tensor([1, 2])}))


def _slot() -> WeightSlot:
    return WeightSlot(build_model(), shared=frozenset(row_sparse_parameters(build_model())))


def test_slot_applies_deltas_bit_for_bit_with_one_copy_of_the_table() -> None:
    trainer = SparseTrainer()
    slot = _slot()
    base = trainer.request()
    slot.load(base.tensors, SnapshotHeader(base.version, base.run_id))
    previous = f"{base.run_id}/{base.version}"
    for _ in range(3):
        trainer.train(2)
        delta = trainer.request()
        assert delta.rows is not None
        dense, rows = split_delta(delta_payload(delta.tensors, delta.rows))
        slot.apply_delta(
            dense,
            rows,
            SnapshotHeader(
                delta.version,
                delta.run_id,
                base_id=f"run-d/{base.version}",
                predecessor_id=previous,
            ),
        )
        previous = f"run-d/{delta.version}"
    with slot.acquire() as lease:
        served = lease.model.state_dict()
    for name, tensor in trainer.state().items():
        assert torch.equal(served[name], tensor), name
    # Rule 5: the table is held once: both copies point at the same storage.
    pointers = [t.data_ptr() for t in (c.targets["table.weight"] for c in slot._copies)]
    assert pointers[0] == pointers[1]


def test_slot_refuses_a_delta_that_does_not_follow_the_live_version() -> None:
    trainer = SparseTrainer()
    slot = _slot()
    base = trainer.request()
    slot.load(base.tensors, SnapshotHeader(base.version, base.run_id))
    trainer.train()
    delta = trainer.request()
    assert delta.rows is not None
    dense, rows = split_delta(delta_payload(delta.tensors, delta.rows))
    with pytest.raises(SnapshotRejected) as refused:
        slot.apply_delta(
            dense,
            rows,
            SnapshotHeader(delta.version, "run-d", base_id="run-d/0", predecessor_id="run-d/77"),
        )
    assert refused.value.reason == "chain_gap"
    assert slot.info is not None and slot.info.version == base.version


class _FlakyWriter:
    """Stands in for the Kafka writer: fails the versions in ``fail``, records the rest."""

    topic = "fake"
    manifest_offset = None  # no topic: the deltas carry no base_offset hint

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.written: list[tuple[SnapshotRequest, str | None, str | None]] = []

    def write(
        self,
        request: SnapshotRequest,
        *,
        base_id: str | None,
        predecessor_id: str | None,
        base_offset: int | None = None,
    ) -> SnapshotManifest:
        if request.version in self.fail:
            raise OSError("broker unreachable")
        self.written.append((request, base_id, predecessor_id))
        delta = request.rows is not None
        return placeholder_manifest(
            request.run_id,
            request.version,
            kind="delta" if delta else "base",
            base_id=base_id if delta else None,
            predecessor_id=predecessor_id if delta else None,
        )

    def close(self, timeout: float) -> None:
        return None


def test_a_failed_delta_is_merged_into_the_next_so_the_chain_loses_no_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trainer = SparseTrainer()
    publisher = SnapshotPublisher(
        kafka=KafkaConnection("127.0.0.1:1"), topic="t", model_name="m", settings_hash="a" * 64
    )
    fake = _FlakyWriter(fail={2})
    monkeypatch.setattr(publisher, "_writer", fake)
    try:
        publisher.offer(trainer.request())  # base 0
        assert publisher.flush(10)
        for _ in range(2):  # delta 2 fails, delta 4 must carry its rows too
            trainer.train(2)
            publisher.offer(trainer.request())
            assert publisher.flush(10)
    finally:
        publisher.close(10)
    assert [(r.version, b, p) for r, b, p in fake.written] == [
        (0, None, None),
        (4, "run-d/0", "run-d/0"),
    ]
    # Applying what was written to the base reproduces the trainer's weights exactly.
    base, (delta, _, _) = fake.written[0][0], fake.written[1]
    rebuilt = merge_requests(base, delta)
    rebuilt.wait_ready()
    for name, tensor in trainer.state().items():
        assert torch.equal(rebuilt.tensors[name], tensor), name


def test_deltas_wait_while_pinned_and_find_a_gap_after_unpin() -> None:
    trainer = SparseTrainer()
    slot = _slot()
    retained = RetainedVersions(slot, build_model(), head_for(SPEC), torch.device("cpu"), 2)
    base = trainer.request()
    retained.load(base.tensors, SnapshotHeader(base.version, base.run_id))

    def delta_args(request: SnapshotRequest, predecessor: int) -> dict[str, Any]:
        assert request.rows is not None
        dense, rows = split_delta(delta_payload(request.tensors, request.rows))
        header = SnapshotHeader(
            request.version, "run-d", base_id="run-d/0", predecessor_id=f"run-d/{predecessor}"
        )
        return {"dense": dense, "rows": rows, "header": header}

    trainer.train()
    d1 = trainer.request()
    retained.apply_delta(**delta_args(d1, 0))
    assert slot.info is not None and slot.info.version == d1.version
    retained.pin(0)  # the operator pins the base: deltas no longer apply
    trainer.train()
    d2 = trainer.request()
    retained.apply_delta(**delta_args(d2, d1.version))
    assert slot.info.version == 0
    retained.unpin()  # the newest retained version is the base: d3 does not follow it
    trainer.train()
    d3 = trainer.request()
    with pytest.raises(SnapshotRejected) as refused:
        retained.apply_delta(**delta_args(d3, d2.version))
    assert refused.value.reason == "chain_gap"
    assert slot.info.version == 0
