"""A dynamic table's ID lookup kept by merges (trainer steps, server deltas) equals a fresh
sort, and the serving slot refuses a received mapping that would give an ID two rows or does
not fit the table (``bad_mapping``), counted, with the old version still serving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamtrain.metrics.registries import SERVER_REGISTRY
from streamtrain.serve.weights.slot import SnapshotRejected, WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.train.models import dynamic_lookup
from streamtrain.train.models.dynamic_lookup import EMPTY, SortedLookup
from streamtrain.train.models.dynamic_table import DynamicMapping
from streamtrain.train.models.sparse_params import TableSettings
from streamtrain.train.row_tracker import row_sparse_buffers, row_sparse_parameters
from tests.unit.test_dynamic_tables_deltas import served_after

SLOTS = "embeddings.mappings.t_items.slot_ids"


def _same(a: SortedLookup, b: SortedLookup) -> None:
    """The same owned (ID, row) pairs, whatever levels each keeps them in."""
    (a_keys, a_rows), (b_keys, b_rows) = a.pairs(), b.pairs()
    assert np.array_equal(a_keys, b_keys) and np.array_equal(a_rows, b_rows)


LEVELS = pytest.mark.parametrize("below", [1 << 40, 0], ids=["one level", "two levels"])


@LEVELS
def test_lookup_merged_step_by_step_equals_a_fresh_sort_under_churn(
    below: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dynamic_lookup, "ONE_LEVEL_BELOW", below)
    m = DynamicMapping(
        TableSettings(kind="dynamic", capacity=50, evict="lru", expire_after_steps=3)
    )
    g = torch.Generator().manual_seed(5)
    for step in range(60):
        m.observe(torch.randint(0, 40, (12,), generator=g) + step * 3)
        merged = m.lookup()
        _same(merged, SortedLookup.build(m.slot_ids))
        assert merged.pairs()[0].size == m.occupied == int((m.slot_ids != EMPTY).sum())
        if below:  # one level: every pair valid after each step, none stale kept
            assert merged.new_keys.size == 0 and merged.keys.size == m.occupied


@LEVELS
def test_lookup_refreshed_by_a_deltas_rows_equals_a_fresh_sort(
    below: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dynamic_lookup, "ONE_LEVEL_BELOW", below)
    m = DynamicMapping(TableSettings(kind="dynamic", capacity=8))
    m.observe(torch.tensor([10, 11, 12, 13]))
    # a delta: ID 11 moves from row 1 to row 5, row 2 empties, row 6 takes 99, 10 stays
    rows = torch.tensor([0, 1, 2, 5, 6])
    before = m.slot_ids[rows].clone()
    m.slot_ids.index_copy_(0, rows, torch.tensor([10, EMPTY, EMPTY, 11, 99]))
    m.refresh(rows, before)
    _same(m.lookup(), SortedLookup.build(m.slot_ids))
    assert m.rows(torch.tensor([11, 99, 12, 13, 10])).tolist() == [5, 6, 8, 3, 0]


_ROW_SPARSE: set[str] = set()


def _trained_slot() -> tuple[WeightSlot, dict[str, torch.Tensor]]:
    learner, slot, base = served_after(12, 1)
    _ROW_SPARSE.update(row_sparse_parameters(learner.model), row_sparse_buffers(learner.model))
    _BASE.clear()
    _BASE.update(base)
    return slot, base


_BASE: dict[str, torch.Tensor] = {}


def _rejected(reason: str) -> float:
    value = SERVER_REGISTRY.get_sample_value(
        "streamtrain_serve_rejected_snapshots_total", {"reason": reason}
    )
    return value or 0.0


def _refused(slot: WeightSlot, apply: object, reason: str = "bad_mapping") -> str:
    before = _rejected(reason)
    with pytest.raises(SnapshotRejected) as caught:
        assert callable(apply)
        apply()
    assert caught.value.reason == reason
    assert _rejected(reason) == before + 1
    return str(caught.value)


def _delta(slot: WeightSlot, index: list[int], ids: torch.Tensor) -> None:
    """A delta on version 1 changing only the mapping rows ``index`` to ``ids``."""
    dense = {n: t for n, t in _BASE.items() if n not in _ROW_SPARSE}
    rows = {n: (torch.zeros(0, dtype=torch.int64), _BASE[n][:0]) for n in _ROW_SPARSE}
    rows[SLOTS] = (torch.tensor(index), ids)
    slot.apply_delta(
        dense,
        rows,
        SnapshotHeader(2, "r", base_id="r/1", predecessor_id="r/1"),
    )


def test_a_delta_giving_an_owned_id_a_second_row_is_refused_and_the_old_version_serves() -> None:
    slot, base = _trained_slot()
    owners = base[SLOTS]
    owned = (owners != EMPTY).nonzero().squeeze(1)
    assert owned.numel() >= 2
    free_or_other = int(owned[1])
    # row owned[1] would take the ID that row owned[0] keeps
    message = _refused(slot, lambda: _delta(slot, [free_or_other], owners[owned[:1]].clone()))
    assert "second row" in message
    # two rows of one delta naming the same new ID
    twice = torch.tensor([123456, 123456])
    message = _refused(slot, lambda: _delta(slot, [int(owned[0]), int(owned[1])], twice))
    assert "more than one row" in message
    # int32 mapping rows: integer state is never cast on the way in
    int32 = torch.tensor([7], dtype=torch.int32)
    message = _refused(slot, lambda: _delta(slot, [int(owned[0])], int32), "shape_mismatch")
    assert "torch.int32" in message
    with slot.acquire() as lease:
        assert lease.info.version == 1
        assert torch.equal(lease.model.state_dict()[SLOTS], owners)


def test_a_delta_moving_an_id_to_another_row_in_the_same_delta_is_accepted() -> None:
    slot, base = _trained_slot()
    owners = base[SLOTS]
    owned = (owners != EMPTY).nonzero().squeeze(1)
    a, b = int(owned[0]), int(owned[1])
    moved = torch.stack([owners[b], owners[a]])  # the two rows swap owners
    _delta(slot, [a, b], moved)
    with slot.acquire() as lease:
        assert lease.info.version == 2
        mapping = lease.model.embeddings.mappings.t_items
        assert mapping.rows(moved).tolist() == [a, b]
        _same(mapping.lookup(), SortedLookup.build(mapping.slot_ids))


def test_a_base_listing_an_id_twice_is_refused() -> None:
    slot, base = _trained_slot()
    forged = dict(base)
    owners = base[SLOTS].clone()
    owned = (owners != EMPTY).nonzero().squeeze(1)
    owners[owned[1]] = owners[owned[0]]
    forged[SLOTS] = owners
    message = _refused(slot, lambda: slot.load(forged, SnapshotHeader(3, "r")))
    assert "more than one row" in message
    with slot.acquire() as lease:
        assert lease.info.version == 1


def test_the_slots_two_copies_share_one_lookup_made_once_per_base_and_delta() -> None:
    slot, base = _trained_slot()
    mappings = [each.model.embeddings.mappings.t_items for each in slot._copies]
    assert mappings[0].slot_ids is mappings[1].slot_ids  # the mapping is held once (rule 5)
    assert mappings[0].lookup() is mappings[1].lookup()  # after the base: one sort, not two
    owners = base[SLOTS]
    owned = (owners != EMPTY).nonzero().squeeze(1)
    a, b = int(owned[0]), int(owned[1])
    moved = torch.stack([owners[b], owners[a]])
    _delta(slot, [a, b], moved)
    assert mappings[0].lookup() is mappings[1].lookup()  # after the delta: one update
    _same(mappings[0].lookup(), SortedLookup.build(mappings[0].slot_ids))
    for mapping in mappings:
        assert mapping.rows(moved).tolist() == [a, b]


def test_the_host_mix_is_torchs_splitmix_bit_for_bit() -> None:
    """``mix64_host`` (fallback rows, admission draws) runs on a uint64 view of the IDs; it must
    give the bits of the int64 finaliser torch computes for hashed tables, over the whole int64
    range, or a server and a trainer, or old and new checkpoints, would disagree on rows."""
    rng = np.random.default_rng(7)
    edges = np.array([0, 1, -1, 2**62, -(2**62), 2**63 - 1, EMPTY], dtype=np.int64)
    ids = np.concatenate([rng.integers(EMPTY, 2**63 - 1, 50_000, endpoint=True), edges])
    z = torch.from_numpy(ids) * -7046029254386353131
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * -4658895280553007687
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * -7723592293110705685
    expected = z ^ ((z >> 31) & ((1 << 33) - 1))
    mixed = dynamic_lookup.mix64_host(ids)
    assert mixed.dtype == np.int64
    assert np.array_equal(mixed, expected.numpy())
    assert np.array_equal(ids[-len(edges) :], edges)  # the input is left as it was
