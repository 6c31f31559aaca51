"""Which rows of which row-sparse parameters changed since the last snapshot.

A parameter is *row-sparse* when its gradient arrives as a sparse COO tensor over its first
dimension: the weight of an ``nn.Embedding`` / ``nn.EmbeddingBag`` built with ``sparse=True``,
or any parameter a model names in a ``row_sparse_parameters`` attribute (an iterable of
``named_parameters`` names). Any model qualifies; the tracker needs nothing from it but that.

Rules (the order is the safety argument):

1. Just before every optimizer step (a step pre-hook) the tracker records the rows of each
   row-sparse parameter's sparse gradient, the one the step applies: on a distributed rank
   that is the union of every rank's rows, already gathered
   (``streamtrain.distributed.sparse_sync``), so rank 0's deltas carry the rows that other
   ranks' batches touched. An optimizer that moves only rows with a gradient (SGD without
   momentum or weight decay, Adagrad, SparseAdam, the row-wise optimizers) changes nothing
   else.
2. A dense gradient on such a parameter (a model that did not ask for sparse gradients) makes
   the next snapshot a base: the tracker does not guess which rows moved.
3. After every optimizer step the tracker notes each tracked parameter's in-place version
   counter. A counter that moved outside a step (a rollback to the last good state, a
   checkpoint load, user code) makes the next snapshot a base.
4. ``take`` returns None (publish a base) for the first snapshot, every ``base_every_deltas``
   deltas, once ``base_every_seconds`` have passed since the last base, and under rules 2-3;
   otherwise the rows changed since the previous ``take``. A model without row-sparse
   parameters always gets None: it publishes bases exactly as before.
5. A module that changes rows outside optimizer steps (a dynamic embedding table re-initialises
   the rows it hands to newly admitted IDs and rewrites its mapping buffers) reports them: it
   has ``drain_changed_rows()`` (rows by state name below the module, cleared by the call) and
   ``row_sparse_buffers`` (the buffers it reports). ``take`` adds those rows; a delta then
   carries the mapping changes with the rows, and the buffers travel as rows, not whole. On
   the host it rewrites weight rows through numpy or ``.data``, leaving the version counter
   alone (rule 6 names them first); on a GPU the write moves the parameter's version before
   the step that follows, which rule 3 reads only after that step: a step that is not
   applied leaves it moved, and the next snapshot is a base.
6. Such a module may also say which rows it is *about* to change, before it changes them
   (:class:`SavesRows`): it calls the function given to ``watch_rows`` with the state name
   below the module and the rows, before every write outside an optimizer step (a dynamic
   table: the weight rows it re-draws, the mapping rows an observe writes). That is the
   rule a step pre-hook follows for optimizer steps, so a background snapshot copy
   (``train/snapshot_copy.py``) can copy such a module's tensors off the training thread
   and save those rows in its undo log first; a module without it is copied whole at the
   snapshot point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


def row_sparse_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's row-sparse parameters by ``named_parameters`` name (see the module doc)."""
    params = dict(model.named_parameters())
    names = {str(n) for n in getattr(model, "row_sparse_parameters", ())}
    unknown = sorted(names - set(params))
    if unknown:
        raise ValueError(
            f"row_sparse_parameters names {unknown[:3]} that the model does not have; use "
            "names from model.named_parameters()"
        )
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.sparse:
            names.add(f"{module_name}.weight" if module_name else "weight")
    return {name: params[name] for name in sorted(names) if params[name].dim() >= 1}


@runtime_checkable
class ReportsRows(Protocol):
    """A module that changes rows outside optimizer steps and says which (rule 5)."""

    @property
    def row_sparse_buffers(self) -> list[str]: ...

    def drain_changed_rows(self) -> dict[str, torch.Tensor]: ...


RowsChanging = Callable[[str, npt.NDArray[np.int64]], None]
"""Rule 6: (state name below the module, host int64 rows) called before the rows change."""


@runtime_checkable
class SavesRows(Protocol):
    """A rule-5 module that says which rows it is about to change (rule 6)."""

    def watch_rows(self, changing: RowsChanging | None) -> None: ...


def _reporters(model: nn.Module) -> list[tuple[str, ReportsRows]]:
    """Rule-5 modules with the prefix of their state names."""
    return [
        (f"{name}." if name else "", module)
        for name, module in model.named_modules()
        if isinstance(module, ReportsRows)
    ]


def reporting_prefixes(model: nn.Module) -> list[str]:
    """State-name prefixes of the rule-5 modules (their tensors change outside steps)."""
    return [prefix for prefix, _ in _reporters(model)]


def row_savers(model: nn.Module) -> list[tuple[str, SavesRows]]:
    """Rule-6 modules with the prefix of their state names."""
    return [(prefix, m) for prefix, m in _reporters(model) if isinstance(m, SavesRows)]


def row_sparse_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers whose changed rows rule-5 modules report, by ``state_dict`` name."""
    buffers = dict(model.named_buffers())
    return {
        prefix + name: buffers[prefix + name]
        for prefix, module in _reporters(model)
        for name in module.row_sparse_buffers
    }


class RowTracker:
    """Records touched rows from gradient hooks; decides base or delta for each snapshot."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        base_every_deltas: int,
        base_every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if base_every_deltas < 0 or base_every_seconds <= 0:
            raise ValueError("base_every_deltas must be >= 0 and base_every_seconds > 0")
        self._params = row_sparse_parameters(model)
        self._reporters = _reporters(model)
        self._buffers = sorted(row_sparse_buffers(model))
        self._base_every_deltas = base_every_deltas
        self._base_every_seconds = base_every_seconds
        self._clock = clock
        self._touched: dict[str, list[torch.Tensor]] = {
            name: [] for name in [*self._params, *self._buffers]
        }
        self._need_base = True
        self._deltas_since_base = 0
        self._base_at = 0.0
        self._after_step: dict[str, int] = {}
        optimizer.register_step_pre_hook(self._record)
        optimizer.register_step_post_hook(self._stepped)

    @property
    def names(self) -> list[str]:
        return list(self._touched)

    def _record(self, *_: object) -> None:
        for name, param in self._params.items():
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                self._touched[name].append(grad._indices()[0].detach())
            else:
                self._need_base = True  # rule 2

    def _stepped(self, *_: object) -> None:
        self._after_step = {name: p._version for name, p in self._params.items()}

    def _moved_outside_steps(self) -> bool:
        return any(self._after_step.get(name, -1) != p._version for name, p in self._params.items())

    def take(self) -> dict[str, torch.Tensor] | None:
        """Rule 4: None for a base, else the sorted unique rows per parameter; resets."""
        rows, base = self.plan()
        return None if base else rows

    def plan(self) -> tuple[dict[str, torch.Tensor] | None, bool]:
        """Rule 4 with the reason kept: (rows, is a base). Rows are None only when they are not
        known (the first snapshot, rules 2-3, no row-sparse parameters): a full copy is
        needed. A base due by schedule (``base_every_*``) still comes with its rows, so the
        snapshot sink can complete it from its copy of the previous snapshot."""
        now = self._clock()
        forced = not self._params or self._need_base or self._moved_outside_steps()
        base = (
            forced
            or self._deltas_since_base >= self._base_every_deltas
            or now - self._base_at >= self._base_every_seconds
        )
        for prefix, module in self._reporters:
            for name, rows in module.drain_changed_rows().items():
                self._touched[prefix + name].append(rows)
        touched = dict(self._drain())
        if base:
            self._need_base = False
            self._deltas_since_base = 0
            self._base_at = now
            self._after_step = {name: p._version for name, p in self._params.items()}
            return (None if forced else touched), True
        self._deltas_since_base += 1
        return touched, False

    def _drain(self) -> Iterator[tuple[str, torch.Tensor]]:
        # A dynamic table reports one array of rows for its three slot buffers: sorted once
        # (at a snapshot point, on the training thread), the same tensor for the three.
        # The parts are kept with their rows, so no id is reused during the drain.
        done: dict[tuple[int, ...], tuple[list[torch.Tensor], torch.Tensor]] = {}
        for name, parts in self._touched.items():
            self._touched[name] = []
            if not parts:
                yield name, torch.empty(0, dtype=torch.int64)
                continue
            key = tuple(id(part) for part in parts)
            if key not in done:
                done[key] = parts, torch.unique(torch.cat(parts)).cpu()
            yield name, done[key][1]
