"""Before each training step: the dynamic tables' admissions and evictions, the optimizer rows
of re-used rows, and the table metrics.

A row handed to a newly admitted ID starts afresh: :meth:`EmbeddingTables.observe` re-draws its
weights, and :func:`reset_optimizer_rows` puts its optimizer state back to the state of a row
never stepped (Adagrad's ``sum`` to ``initial_accumulator_value``, other per-row state such as
SparseAdam's moments to zero), in the same step, before the forward that first reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from streamtrain import metrics
from streamtrain.sample.sparse_torch import SparseInput
from streamtrain.train.models.dynamic_lookup import Int64s
from streamtrain.train.models.dynamic_table import Observed
from streamtrain.train.models.embedding import EmbeddingTables

Gather = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def reset_optimizer_rows(
    optimizer: Optimizer,
    param: torch.Tensor,
    rows: torch.Tensor | Int64s,
    group: dict[str, Any] | None = None,
) -> None:
    """Reset ``rows`` (a tensor, or a host array) of every per-row state tensor the optimizer
    keeps for ``param`` (``group``: its parameter group, when the caller knows it). No
    ``no_grad`` needed: optimizer state is no autograd leaf, and entering it costs more than
    the write on a small step."""
    if rows.size == 0 if isinstance(rows, np.ndarray) else rows.numel() == 0:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    if group is None:
        group = group_of(optimizer, param)
    for name, value in state.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue  # a step count: shared by the whole table
        if value.shape[0] != param.shape[0]:
            continue
        fill = group.get("initial_accumulator_value", 0.0) if name == "sum" else 0.0
        if isinstance(rows, np.ndarray):
            if value.is_cpu and value.dtype in _HOST_DTYPES:
                value.numpy()[rows] = fill  # a numpy view: a tenth of index_fill_'s dispatch
                continue
            rows = torch.from_numpy(rows)
        if value.is_cpu and value.dtype in _HOST_DTYPES and rows.is_cpu:
            value.numpy()[rows.numpy()] = fill
        else:
            value.index_fill_(0, rows if value.is_cpu else rows.to(value.device), fill)


def group_of(optimizer: Optimizer, param: torch.Tensor) -> dict[str, Any]:
    """The parameter group holding ``param``."""
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


_HOST_DTYPES = (torch.float32, torch.float64)


class _Series:
    """One table's metric children, looked up once (``labels`` costs more than ``inc``)."""

    def __init__(self, table: str) -> None:
        self.occupancy = metrics.TABLE_OCCUPANCY.labels(table)
        self.occupancy.set(0)  # every series exported at 0 from the start
        self._occupancy = 0.0
        self.admissions = metrics.TABLE_ADMISSIONS.labels(table)
        self.refusals = {
            r: metrics.TABLE_REFUSALS.labels(table, r) for r in ("filter", "probability", "full")
        }
        self.evictions = {
            c: metrics.TABLE_EVICTIONS.labels(table, c) for c in ("lru", "lfu", "expired")
        }

    def count(self, observed: Observed, occupancy: float) -> None:
        if observed.admitted:
            self.admissions.inc(observed.admitted)
        for reason, count in observed.refused.items():
            if count:
                self.refusals[reason].inc(count)
        for cause, count in observed.evicted.items():
            if count:
                self.evictions[cause].inc(count)
        if occupancy != self._occupancy:  # a full table's stays put: no lock taken per step
            self.occupancy.set(occupancy)
            self._occupancy = occupancy


class _HostRows:
    """The per-row optimizer state of one table weight as numpy views with their reset values,
    kept while the optimizer keeps those very tensors (a checkpoint load or a rollback gives
    it new ones)."""

    __slots__ = ("state", "tensors", "views")

    def __init__(self, state: dict[str, Any], views: list[tuple[Any, float]]) -> None:
        self.state, self.tensors, self.views = state, dict(state), views

    def holds(self, state: dict[str, Any]) -> bool:
        tensors = self.tensors
        return (
            state is self.state
            and len(state) == len(tensors)
            and all(state.get(name) is value for name, value in tensors.items())
        )

    @classmethod
    def of(cls, state: dict[str, Any], rows: int, group: dict[str, Any]) -> _HostRows | None:
        """None when some per-row state is off the host or not float (the general path)."""
        views = []
        for name, value in state.items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue  # a step count: shared by the whole table
            if value.shape[0] != rows:
                continue
            if not value.is_cpu or value.dtype not in _HOST_DTYPES:
                return None
            fill = group.get("initial_accumulator_value", 0.0) if name == "sum" else 0.0
            views.append((value.numpy(), fill))
        return cls(state, views)


class TableUpkeep:
    """Runs the dynamic tables of ``model`` (none: :meth:`find` returns None)."""

    def __init__(self, tables: list[EmbeddingTables], optimizer: Optimizer) -> None:
        self._tables = tables
        self._optimizer = optimizer
        self._series = {t: _Series(t) for module in tables for t in module.dynamic}
        self._capacity = {t: m.capacity for module in tables for t, m in module.dynamic.items()}
        self._host_rows: dict[int, _HostRows] = {}  # by id of the weight
        # each table weight's parameter group, for the param_groups list it was found in (a
        # checkpoint load replaces the list and its groups)
        self._groups: dict[int, dict[str, Any]] = {}
        self._groups_of: list[dict[str, Any]] | None = None

    @classmethod
    def find(cls, model: nn.Module, optimizer: Optimizer) -> TableUpkeep | None:
        tables = [m for m in model.modules() if isinstance(m, EmbeddingTables) and m.dynamic]
        return cls(tables, optimizer) if tables else None

    def _group(self, weight: torch.Tensor) -> dict[str, Any]:
        if self._groups_of is not self._optimizer.param_groups:
            self._groups, self._groups_of = {}, self._optimizer.param_groups
        group = self._groups.get(id(weight))
        if group is None:
            group = self._groups[id(weight)] = group_of(self._optimizer, weight)
        return group

    def _reset_optimizer_rows(self, weight: torch.Tensor, rows: Int64s) -> None:
        """:func:`reset_optimizer_rows` through numpy views kept from step to step (the state
        is found, checked and viewed once, not each step)."""
        state = self._optimizer.state.get(weight)
        if not state:
            return
        kept = self._host_rows.get(id(weight))
        if kept is None or not kept.holds(state):
            group = self._group(weight)
            kept = _HostRows.of(state, weight.shape[0], group)
            if kept is None:
                reset_optimizer_rows(self._optimizer, weight, rows, group)
                return
            self._host_rows[id(weight)] = kept
        for view, fill in kept.views:
            view[rows] = fill

    def before_step(self, sparse: SparseInput | None, gather: Gather | None) -> None:
        """Admit, evict and reset for one step's batch (``gather``: see ``observe``)."""
        for module in self._tables:
            for table, weight, observed in module.observe(sparse or {}, gather):
                if observed.admitted:
                    self._reset_optimizer_rows(weight, observed.placed)
                self._series[table].count(observed, observed.owned / self._capacity[table])
