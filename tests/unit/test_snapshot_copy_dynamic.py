"""A dynamic table's weights and mapping copied off the training thread
(``train/snapshot_copy.py`` with ``row_tracker.py`` rule 6): a snapshot taken while
admissions, evictions and expiries re-draw rows and rewrite the mapping during the background
copy is the weights and mapping at its step, bit for bit; a write nobody announced spoils it."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import SparseFeature
from streamtrain.train.hooks import CopySpoiled
from streamtrain.train.models.embedding import EmbeddingTables
from streamtrain.train.models.sparse_params import TableSettings
from streamtrain.train.snapshot_copy import SnapshotCopier
from streamtrain.train.table_upkeep import TableUpkeep
from streamtrain.train.weights import take_snapshot
from tests.copy_gate import assert_free_running_copies_stay_exact, copy_gate
from tests.delta_fixtures import model_state

CAPACITY, DIM, IDS = 600, 8, 3000


class _Model(nn.Module):
    def __init__(self, table: TableSettings) -> None:
        super().__init__()
        self.embeddings = EmbeddingTables(
            [SparseFeature("id", "ids")], DIM, CAPACITY + 1, kinds={"ids": table}
        )
        self.out = nn.Linear(DIM, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[0]
        sparse = {"id": JaggedTensor(ids, torch.arange(n), torch.ones(n))}
        return self.out(self.embeddings.pooled(sparse)["id"])


class _Trainer:
    def __init__(self, table: TableSettings) -> None:
        torch.manual_seed(0)
        self.model = _Model(table)
        self.optimizer = torch.optim.Adagrad(self.model.parameters(), lr=0.1)
        self.upkeep = TableUpkeep.find(self.model, self.optimizer)
        assert self.upkeep is not None
        # every tensor in the background (min_bytes 0), in many small chunks
        self.copier = SnapshotCopier(self.model, self.optimizer, chunk_bytes=256, min_bytes=0)
        self.gen = torch.Generator().manual_seed(1)
        self.step = 0

    def train(self, steps: int) -> None:
        assert self.upkeep is not None
        for _ in range(steps):
            # a window of IDs sliding over the universe: new IDs every step (admissions and
            # evictions of a full table), old ones unseen (expiry)
            low = (self.step * 40) % IDS
            ids = low + torch.randint(0, 200, (64,), generator=self.gen)
            n = ids.shape[0]
            self.upkeep.before_step({"id": JaggedTensor(ids, torch.arange(n), torch.ones(n))}, None)
            loss = (self.model(ids) - 1.0).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.step += 1

    def state(self) -> dict[str, torch.Tensor]:
        return model_state(self.model)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    with copy_gate(monkeypatch) as events:
        yield events


def _settings(evict: str, admit_after: int) -> TableSettings:
    return TableSettings(
        kind="dynamic",
        capacity=CAPACITY,
        evict=evict,
        expire_after_steps=12,
        admit_after=admit_after,
        filter_cells=512,
    )


def _changed_rows(before: torch.Tensor, after: torch.Tensor) -> int:
    differs = before != after
    return int(differs.reshape(differs.shape[0], -1).any(dim=1).sum())


@pytest.mark.parametrize(("evict", "admit_after"), [("lru", 2), ("lfu", 1), ("lfu", 3)])
def test_the_copy_is_the_table_at_its_step_while_rows_are_reset(
    gate: tuple[threading.Event, threading.Event], evict: str, admit_after: int
) -> None:
    held, release = gate
    trainer = _Trainer(_settings(evict, admit_after))
    trainer.train(30)  # the table fills and starts evicting and expiring
    at_step = trainer.state()
    taken = take_snapshot(trainer.model, None, trainer.copier)
    assert held.wait(10), "the copy thread never started on the table"
    names = [n for n in at_step if n.startswith("embeddings.")]
    # the training thread returned with the table and its mapping not copied yet
    weight = "embeddings.tables.t_ids.weight"
    assert not torch.equal(taken.tensors[weight], at_step[weight])
    trainer.train(25)
    mapping = trainer.model.embeddings.dynamic["ids"]
    assert int(mapping.step) == 55
    # rows of every background tensor changed meanwhile: owners and stamps outside a step,
    # filter cells, weights re-drawn for new owners and stepped
    for name in names:
        if at_step[name].dim() >= 1:
            assert _changed_rows(at_step[name], trainer.model.state_dict()[name]) > 0, name
    release.set()
    taken.wait_ready()
    for name, tensor in at_step.items():
        assert torch.equal(taken.tensors[name], tensor), name


def test_free_running_copies_of_a_dynamic_table_stay_exact() -> None:
    assert_free_running_copies_stay_exact(_Trainer(_settings("lru", 1)), 4, before=7, during=3)


def test_a_mapping_write_nobody_announced_spoils_the_copy(
    gate: tuple[threading.Event, threading.Event],
) -> None:
    held, release = gate
    trainer = _Trainer(_settings("lru", 1))
    trainer.train(20)
    taken = take_snapshot(trainer.model, None, trainer.copier)
    assert held.wait(10)
    mapping = trainer.model.embeddings.dynamic["ids"]
    mapping.last_seen.add_(1)  # e.g. a checkpoint load: torch moves the version counter
    release.set()
    with pytest.raises(CopySpoiled, match=r"last_seen changed outside an optimizer step"):
        taken.wait_ready()
    assert trainer.copier.take_spoiled()


def test_a_copy_of_the_model_does_not_take_the_copier_along() -> None:
    trainer = _Trainer(_settings("lfu", 1))
    trainer.train(3)
    clone = copy.deepcopy(trainer.model)  # would fail on the copier's lock if taken along
    assert clone.embeddings._changing is None
    assert clone.embeddings.dynamic["ids"].watch.changing is None
    assert trainer.model.embeddings.dynamic["ids"].watch.changing is not None
    trainer.copier.close()
    assert trainer.model.embeddings.dynamic["ids"].watch.changing is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_host_reset_leaves_the_version_counter_alone(dtype: torch.dtype) -> None:
    """The rows a reset re-draws were announced first (rule 6): a moved version counter would
    read as a change nobody saved and spoil every copy it overlaps (rule 4)."""
    model = _Model(_settings("lru", 1)).to(dtype)
    weight = model.embeddings.tables.t_ids.weight
    before, version = weight.detach().clone(), weight._version
    ids = torch.arange(100)
    done = model.embeddings.observe({"id": JaggedTensor(ids, torch.arange(100), torch.ones(100))})
    placed = torch.from_numpy(done[0][2].placed)
    assert placed.numel() == 100
    assert _changed_rows(before[placed], weight.detach()[placed]) == 100  # re-drawn
    assert weight._version == version
