"""Copies of a model with a dynamic table (the serving slot's second copy, a retained version)
take no copy of the mapping's derived state: its numpy views and lookup are rebuilt from the
copy's own buffers (``dynamic_mappings.derived_memo``), not copied as arrays."""

from __future__ import annotations

import copy

import numpy as np
import torch

from streamtrain.train.models.dynamic_mappings import derived_memo
from streamtrain.train.models.dynamic_table import EMPTY, DynamicMapping
from tests.unit.test_dynamic_tables import _batches, _learner
from tests.unit.test_dynamic_tables_deltas import served_after


def _mapping(model: torch.nn.Module) -> DynamicMapping:
    mapping = model.embeddings.mappings.t_items
    assert isinstance(mapping, DynamicMapping)
    return mapping


def _views_buffer(mapping: DynamicMapping) -> bool:
    return np.shares_memory(mapping._views.slot_ids, mapping.slot_ids.numpy())


def test_a_copy_rebuilds_the_derived_state_from_its_own_buffers() -> None:
    learner = _learner()
    for x, y, w, sparse in _batches(10):
        learner.learn(x, y, w, sparse)
    original = _mapping(learner.model)
    slot_ids = original.slot_ids
    owned = slot_ids[slot_ids != EMPTY][:50]
    ids = torch.cat([owned, torch.tensor([-5, 10**12])])  # two IDs never admitted
    expected = original.rows(ids)
    # a plain deepcopy copies the views as arrays: they view nothing of the copy's buffers
    assert not _views_buffer(_mapping(copy.deepcopy(learner.model)))
    clone = _mapping(copy.deepcopy(learner.model, derived_memo(learner.model)))
    assert clone._lookup is None
    assert torch.equal(clone.rows(ids), expected)  # rebuilt when first used
    assert _views_buffer(clone)
    assert _views_buffer(original)


def test_both_copies_of_the_slot_view_the_shared_mapping_after_a_base() -> None:
    learner, slot, _ = served_after(12, 3)
    shared = _mapping(learner.model).slot_ids  # the trainer's, for the expected rows
    ids = shared[shared != EMPTY][:40]
    copies = [_mapping(each.model) for each in slot._copies]
    assert copies[0].slot_ids is copies[1].slot_ids  # held once (slot rule 5)
    for mapping in copies:
        assert _views_buffer(mapping)
        assert torch.equal(mapping.rows(ids), _mapping(learner.model).rows(ids))
