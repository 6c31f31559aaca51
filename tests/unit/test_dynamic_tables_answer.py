"""The rows ``observe`` settles for its batch are handed to the training forward (which asks
``rows`` for the same ID tensor, twice with an evaluation pass) instead of searching the
lookup again: they must be exactly the rows the lookup gives, and never be used for other
IDs or after the mapping changed."""

from __future__ import annotations

import pytest
import torch

from streamtrain.train.models.dynamic_table import EMPTY, DynamicMapping
from streamtrain.train.models.sparse_params import TableSettings
from tests.unit.test_dynamic_tables_reference import CASES, churn


def _searched(mapping: DynamicMapping, ids: torch.Tensor) -> list[int]:
    """The rows by the lookup (a copy of the IDs is not the tensor observe saw)."""
    return mapping.rows(ids.clone()).tolist()


@pytest.mark.parametrize("case", list(CASES))
def test_the_observed_batch_reads_the_rows_the_lookup_gives(case: str) -> None:
    settings = TableSettings(kind="dynamic", capacity=37, fallback_rows=3, **CASES[case])
    mapping = DynamicMapping(settings)
    answered = 0
    for number, batch in enumerate(churn(120, 24, seed=len(case))):
        ids = torch.tensor(batch, dtype=torch.int64)
        mapping.observe(ids)
        answered += mapping._answer is not None and mapping._answer.answers(ids, mapping)
        assert mapping.rows(ids).tolist() == _searched(mapping, ids), f"{case}, step {number}"
    assert answered == 120, "every step's batch must be answered from observe"


def test_a_batch_holding_the_free_marker_is_left_to_the_lookup() -> None:
    mapping = DynamicMapping(TableSettings(kind="dynamic", capacity=4, fallback_rows=2))
    ids = torch.tensor([5, EMPTY, 5, 9], dtype=torch.int64)
    mapping.observe(ids)
    assert mapping._answer is None
    assert mapping.rows(ids).tolist() == _searched(mapping, ids)
    only = torch.tensor([EMPTY, EMPTY], dtype=torch.int64)  # no distinct ID at all
    mapping.observe(only)
    assert mapping._answer is None
    assert mapping.rows(only).tolist() == _searched(mapping, only) == [4, 4]


def test_a_step_of_owners_only_and_a_refused_id_read_their_rows() -> None:
    """The two ways observe settles rows in place: a step whose IDs all own rows (nothing
    placed), and a step where the filter refuses one ID (the fallback) and admits another."""
    settings = TableSettings(kind="dynamic", capacity=3, fallback_rows=2, admit_after=2)
    mapping = DynamicMapping(settings)
    mapping.observe(torch.tensor([1, 1, 2, 2], dtype=torch.int64))  # both admitted
    owners = torch.tensor([2, 1, 2], dtype=torch.int64)
    done = mapping.observe(owners)
    assert done.admitted == 0 and done.placed.size == 0 and done.owned == 2
    assert mapping.rows(owners).tolist() == [1, 0, 1]
    mixed = torch.tensor([5, 6, 6, 1], dtype=torch.int64)  # 5 once: refused; 6 twice: admitted
    done = mapping.observe(mixed)
    assert done.refused["filter"] == 1 and done.admitted == 1 and done.owned == 3
    got = mapping.rows(mixed).tolist()
    assert got == _searched(mapping, mixed) and got[1:] == [2, 2, 0] and got[0] >= 3


def test_an_answer_is_not_used_after_the_ids_or_the_mapping_changed() -> None:
    settings = TableSettings(kind="dynamic", capacity=3, fallback_rows=2)
    mapping = DynamicMapping(settings)
    ids = torch.tensor([1, 2, 3], dtype=torch.int64)
    mapping.observe(ids)
    assert mapping.rows(ids).tolist() == [0, 1, 2]
    ids[0] = 7  # written in place: the tensor's version moves
    assert mapping.rows(ids).tolist() == _searched(mapping, ids)
    assert mapping.rows(ids)[0] >= settings.capacity  # 7 was never admitted

    other = DynamicMapping(settings)
    for one in (3, 2, 1):  # one a step: 3 owns row 0, 1 row 2
        other.observe(torch.tensor([one], dtype=torch.int64))
    again = torch.tensor([1, 2, 3], dtype=torch.int64)
    mapping.observe(again)
    mapping.load_state_dict(other.state_dict())  # a checkpoint load writes the mapping
    assert mapping.rows(again).tolist() == [2, 1, 0]

    later = torch.tensor([4, 5, 4], dtype=torch.int64)
    mapping.observe(later)  # a later step: the earlier batch's answer is gone
    assert mapping._answer is not None and not mapping._answer.answers(again, mapping)
    assert mapping.rows(again).tolist() == _searched(mapping, again)
