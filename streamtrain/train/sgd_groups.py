"""Adam or AdamW whose parameter groups marked ``"sgd": True`` step as plain SGD.

``auto``'s linear head learns by plain SGD at its own rate while the MLP learns by Adam
(:func:`streamtrain.train.optim.param_groups`). As a second Adam group (``beta1`` 0, ``eps``
1e3, which approximates SGD) it cost a whole pass of Adam's per-group Python each step, about
a seventh of ``auto``'s extra CPU time over ``mlp`` in a batch-1 step (bench/README.md, Peers);
here the Adam groups step through torch's own ``Adam.step`` and each SGD group is one
``_foreach_add_`` (``p -= lr * grad``, no state, no weight decay). The optimizer stays one
object, so the learning-rate schedule, the per-group step scaling, the loss scaler, checkpoints
and the distributed step treat the SGD group as any other.

A checkpoint written before (its linear-head group an Adam group with ``eps`` 1e3 and its Adam
state) is refused with a one-line error: its scheduler would restore that group's learning rate
scaled by 1e3, which plain SGD would take as is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast, overload

import torch
from torch.optim import Adam, AdamW


def _plain_step(step: Callable[..., Any]) -> Callable[..., Any]:
    """Adam's ``step`` without the profiling wrapper torch puts on a class's ``step`` once an
    instance exists: this class's own ``step`` is wrapped already, twice costs a second
    ``record_function`` pair and hook lookup per step."""
    if not getattr(step, "hooked", False):
        return step
    # functools.wraps keeps the wrapped function in the wrapper's __dict__
    return cast(Callable[..., Any], vars(step)["__wrapped__"])


class _SGDGroups:
    """Mixed in before :class:`torch.optim.Adam` (or AdamW)."""

    param_groups: list[dict[str, Any]]
    # (param_groups list, its length, the Adam groups, the SGD groups, Adam's step): split
    # once, not every step; a new or longer list (load_state_dict, add_param_group) splits again
    _split: tuple[list[dict[str, Any]], int, list[dict[str, Any]], list[dict[str, Any]], Any]
    _split = ([], 0, [], [], None)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Adam's step for the Adam groups (it turns grad mode off itself), then each SGD
        group's, with grad mode off."""
        if closure is not None:
            raise ValueError("an optimizer with plain-SGD groups takes no closure")
        groups = self.param_groups
        split = self._split
        if split[0] is not groups or split[1] != len(groups):
            adam = [group for group in groups if not group.get("sgd")]
            sgd = [group for group in groups if group.get("sgd")]
            split = self._split = (groups, len(groups), adam, sgd, _plain_step(Adam.step))
        _groups, _count, adam, sgd, adam_step = split
        if sgd:
            # Adam's step reads self.param_groups: hand it only its own groups
            self.param_groups = adam
            try:
                adam_step(self)
            finally:
                self.param_groups = groups
            for group in sgd:
                _sgd_step(group)
        else:
            adam_step(self)
        return None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("param_groups", [])
        for index, (group, live) in enumerate(zip(saved, self.param_groups, strict=False)):
            if live.get("sgd") and not group.get("sgd"):
                raise ValueError(
                    f"parameter group {index} (auto's linear head) was saved as an Adam group by "
                    "an older streamtrain; this version steps it as plain SGD and cannot resume "
                    "that state: resume with the version that wrote the checkpoint, or start a "
                    "new checkpoint directory"
                )
        super().load_state_dict(state_dict)  # type: ignore[misc]


def _sgd_step(group: dict[str, Any]) -> None:
    params = [p for p in group["params"] if p.grad is not None]
    if params:
        grads = [p.grad for p in params]
        # grad mode off as torch.no_grad() does, without its two objects per step
        enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            torch._foreach_add_(params, grads, alpha=-float(group["lr"]))
        finally:
            torch._C._set_grad_enabled(enabled)


class AdamSGD(_SGDGroups, Adam):
    """Adam, with plain-SGD groups (see the module's docstring)."""


class AdamWSGD(_SGDGroups, AdamW):
    """AdamW, with plain-SGD groups (see the module's docstring)."""
