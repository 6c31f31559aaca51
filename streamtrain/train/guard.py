"""The non-finite guard: which steps to skip, when to roll back, and the state to roll back to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer


class Verdict(Enum):
    APPLY = "apply"  # finite loss and gradients: take the optimizer step
    SKIP = "skip"  # not finite: drop the gradients, keep the weights
    ROLLBACK = "rollback"  # too many bad steps in a row: restore the last good state


class BadStepGuard:
    """Counts consecutive non-finite steps; the ``max_bad_steps``-th one in a row asks for a
    rollback and starts the count again.

    >>> guard = BadStepGuard(max_bad_steps=2)
    >>> [guard.judge(ok).value for ok in (False, True, False, False, False)]
    ['skip', 'apply', 'skip', 'rollback', 'skip']
    """

    def __init__(self, max_bad_steps: int) -> None:
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {max_bad_steps}")
        self.max_bad_steps = max_bad_steps
        self.consecutive_bad = 0

    def judge(self, finite: bool) -> Verdict:
        if finite:
            self.consecutive_bad = 0
            return Verdict.APPLY
        self.consecutive_bad += 1
        if self.consecutive_bad >= self.max_bad_steps:
            self.consecutive_bad = 0
            return Verdict.ROLLBACK
        return Verdict.SKIP


@dataclass
class _Slot:
    """One optimizer-state entry: tensors are kept in reusable buffers, the rest as values."""

    tensors: dict[str, torch.Tensor]
    values: dict[str, Any]


class GoodState:
    """A device-side copy of model parameters, buffers and optimizer state.

    ``save`` copies into buffers allocated on first use and reused afterwards (``copy_`` in
    place), so memory stays at one extra copy of the state however often it is refreshed.
    ``restore`` copies back in place: parameter storage (and the optimizer's references to
    it) is unchanged.

    >>> model = nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> good = GoodState(model, opt)
    >>> good.save()
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(float("nan"))
    >>> good.restore()
    >>> bool(model.weight.isfinite().all())
    True
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer) -> None:
        self._model = model
        self._optimizer = optimizer
        self._live: list[torch.Tensor] = [
            *model.parameters(),
            *(b for b in model.buffers() if b is not None),
        ]
        self._saved: list[torch.Tensor] = []
        self._opt_saved: dict[int, _Slot] = {}
        self._has_state = False

    @property
    def saved(self) -> bool:
        return self._has_state

    @torch.no_grad()
    def save(self) -> None:
        if not self._saved:
            self._saved = [t.detach().clone() for t in self._live]
        else:
            torch._foreach_copy_(self._saved, [t.detach() for t in self._live])
        seen: set[int] = set()
        for param, state in self._optimizer.state.items():
            key = id(param)
            seen.add(key)
            slot = self._opt_saved.get(key)
            if slot is None or not _same_layout(slot, state):
                slot = _Slot(tensors={}, values={})
                for name, value in state.items():
                    if isinstance(value, torch.Tensor):
                        slot.tensors[name] = value.detach().clone()
                    else:
                        slot.values[name] = value
                self._opt_saved[key] = slot
                continue
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    slot.tensors[name].copy_(value)
                else:
                    slot.values[name] = value
        for key in set(self._opt_saved) - seen:
            del self._opt_saved[key]
        self._has_state = True

    @torch.no_grad()
    def restore(self) -> None:
        if not self._has_state:
            raise RuntimeError("no good state saved yet; call save() first")
        torch._foreach_copy_([t.detach() for t in self._live], self._saved)
        state = self._optimizer.state
        for group in self._optimizer.param_groups:
            for param in group["params"]:
                slot = self._opt_saved.get(id(param))
                if slot is None:
                    # the optimizer had not touched this parameter when the state was saved
                    state.pop(param, None)
                    continue
                live = state.get(param)
                if live is None or not _same_layout(slot, live):
                    state[param] = {
                        **{k: v.clone() for k, v in slot.tensors.items()},
                        **slot.values,
                    }
                    continue
                for name, saved in slot.tensors.items():
                    live[name].copy_(saved)
                live.update(slot.values)


def _same_layout(slot: _Slot, state: dict[str, Any]) -> bool:
    if set(slot.tensors) | set(slot.values) != set(state):
        return False
    return all(
        isinstance(state[name], torch.Tensor)
        and state[name].shape == saved.shape
        and state[name].dtype == saved.dtype
        and state[name].device == saved.device
        for name, saved in slot.tensors.items()
    )
