"""The per-step upkeep of dynamic tables on its host fast paths: reset rows drawn alike whether
written through a numpy view (float32 on the CPU) or through torch (any other dtype), the
weight left an autograd leaf; optimizer rows reset through numpy views or ``index_fill_``; the
parameter group found again after a checkpoint load replaced the optimizer's groups; the views
kept from step to step (optimizer state, weights) following replaced tensors and copies."""

from __future__ import annotations

from copy import deepcopy

import torch

from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import SparseFeature
from streamtrain.train.models.embedding import EmbeddingTables
from streamtrain.train.models.sparse_params import TableSettings
from streamtrain.train.table_upkeep import TableUpkeep, reset_optimizer_rows


def _tables(dtype: torch.dtype) -> EmbeddingTables:
    torch.manual_seed(0)
    table = TableSettings(kind="dynamic", capacity=6, fallback_rows=1)
    tables = EmbeddingTables(
        [SparseFeature("item", "items"), SparseFeature("user", "users")],
        dim=4,
        rows=16,
        kinds={"items": table, "users": table},
    )
    return tables.to(dtype)


def _batch(*ids: int) -> dict[str, JaggedTensor]:
    rows = [[i] for i in ids]
    return {"item": JaggedTensor.from_lists(rows), "user": JaggedTensor.from_lists(rows)}


def test_reset_rows_are_the_same_draw_through_numpy_and_through_torch() -> None:
    single, double = _tables(torch.float32), _tables(torch.float64)
    weights = {}
    for tables in (single, double):
        tables.observe(_batch(*range(6)))  # fills both tables
        weights[tables] = {t: tables._weight(t).detach().clone() for t in ("items", "users")}
    for step in range(3):
        batch = _batch(100 + 3 * step, 101 + 3 * step, 102 + 3 * step)  # three evictions
        done_single = {t: o for t, _, o in single.observe(batch)}
        done_double = {t: o for t, _, o in double.observe(batch)}
        for table in ("items", "users"):
            rows = done_single[table].reset
            assert rows.tolist() == done_double[table].reset.tolist() and rows.numel() == 3
            a, b = single._weight(table), double._weight(table)
            # the same seeded float32 draw lands in both (float64 holds it exactly)
            assert torch.equal(a.detach()[rows].double(), b.detach()[rows])
            assert not torch.equal(a.detach()[rows], weights[single][table][rows])
            kept = torch.ones(a.shape[0], dtype=torch.bool)
            kept[rows] = False
            assert torch.equal(a.detach()[kept], weights[single][table][kept])
            assert a.is_leaf and a.requires_grad and a.grad_fn is None
            weights[single][table] = a.detach().clone()
    # the two tables of one step draw different rows
    assert not torch.equal(single._weight("items")[rows], single._weight("users")[rows])


def test_optimizer_rows_are_reset_through_views_and_through_index_fill() -> None:
    host = torch.nn.Parameter(torch.zeros(8, 2))
    optimizer = torch.optim.Adagrad([host], initial_accumulator_value=0.5)
    optimizer.state[host]["sum"].fill_(3.0)
    reset_optimizer_rows(optimizer, host, torch.tensor([1, 6]))
    assert optimizer.state[host]["sum"][:, 0].tolist() == [3, 0.5, 3, 3, 3, 3, 0.5, 3]
    # a dtype numpy cannot view goes through torch
    optimizer.state[host]["sum"] = torch.full((8, 2), 3.0, dtype=torch.bfloat16)
    reset_optimizer_rows(optimizer, host, torch.tensor([2]))
    assert optimizer.state[host]["sum"][:, 1].tolist() == [3, 3, 0.5, 3, 3, 3, 3, 3]


def test_the_parameter_group_is_found_again_after_a_checkpoint_load() -> None:
    tables = _tables(torch.float32)
    optimizer = torch.optim.Adagrad(tables.parameters(), initial_accumulator_value=0.25)
    upkeep = TableUpkeep([tables], optimizer)
    upkeep.before_step(_batch(*range(6)), None)
    weight = tables._weight("items")
    placed = {t: o.reset for t, _, o in tables.observe(_batch(50))}  # no reset of Adagrad rows
    assert float(optimizer.state[weight]["sum"][placed["items"]].max()) == 0.25
    saved = optimizer.state_dict()
    saved["param_groups"][0]["initial_accumulator_value"] = 0.75
    optimizer.load_state_dict(saved)  # new groups: the cached one is stale
    optimizer.state[weight]["sum"].fill_(9.0)
    before = tables.dynamic["items"].slot_ids.clone()
    upkeep.before_step(_batch(60, 61), None)
    rows = (tables.dynamic["items"].slot_ids != before).nonzero().squeeze(1)
    assert rows.numel() == 2
    sums = optimizer.state[weight]["sum"]
    assert sums[rows].unique().tolist() == [0.75]
    assert float(sums.sum()) == 9.0 * (sums.numel() - rows.numel() * 4) + 0.75 * rows.numel() * 4


def test_kept_optimizer_views_follow_a_state_tensor_replaced_in_place_of_the_old() -> None:
    """The upkeep keeps numpy views of the optimizer's per-row state from step to step: a state
    tensor replaced in the same state dict (as a rollback may) is the one reset next."""
    tables = _tables(torch.float32)
    optimizer = torch.optim.Adagrad(tables.parameters(), initial_accumulator_value=0.25)
    upkeep = TableUpkeep([tables], optimizer)
    upkeep.before_step(_batch(*range(6)), None)  # fills both tables: the views are kept
    weight = tables._weight("items")
    old = optimizer.state[weight]["sum"]
    optimizer.state[weight]["sum"] = torch.full_like(old, 9.0)
    old.fill_(5.0)
    before = tables.dynamic["items"].slot_ids.clone()
    upkeep.before_step(_batch(70, 71, 72), None)  # three evictions in each table
    rows = (tables.dynamic["items"].slot_ids != before).nonzero().squeeze(1)
    assert rows.numel() == 3
    sums = optimizer.state[weight]["sum"]
    assert sums[rows].unique().tolist() == [0.25]
    kept = torch.ones(sums.shape[0], dtype=torch.bool)
    kept[rows] = False
    assert sums[kept].unique().tolist() == [9.0]
    assert old.unique().tolist() == [5.0]  # the replaced tensor is no longer written


def test_a_copy_of_the_tables_resets_its_own_rows_and_carries_no_host_cache() -> None:
    """Reset rows are written through a kept numpy view of the weight: a deep copy (the serving
    slot's second copy) carries no such view, so its resets land in its own weights and the
    original's stay as they were."""
    original = _tables(torch.float32)
    original.observe(_batch(*range(6)))  # fills both tables
    original.observe(_batch(40, 41))  # a reset: the weights' views are kept now
    assert original._host_weights
    copy = deepcopy(original)
    assert not copy._host_weights and copy._draws[0].numel() == 0
    kept = {t: original._weight(t).detach().clone() for t in ("items", "users")}
    done = {t: o for t, _, o in copy.observe(_batch(50, 51))}
    for table in ("items", "users"):
        rows = done[table].reset
        assert rows.numel() == 2
        assert torch.equal(original._weight(table).detach(), kept[table])
        assert not torch.equal(copy._weight(table).detach()[rows], kept[table][rows])
