"""Optimizers and learning-rate schedules that resume from a step counter alone."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from streamtrain.train.sgd_groups import AdamSGD, AdamWSGD
from streamtrain.train.step_size import ScaleRule, StepSamples, step_lr_scale

OptimizerName = Literal["sgd", "adam", "adamw", "adagrad", "rmsprop"]
ScheduleName = Literal["constant", "cosine", "step", "inverse_sqrt"]

_MOMENTUM_USERS = ("sgd", "rmsprop")

ParamGroup = dict[str, Any]


@runtime_checkable
class HasLinearHead(Protocol):
    """A model whose linear head may learn by plain SGD at its own rate (``auto``, whose
    ``linear_lr`` is 0.01 by default; None: one group)."""

    linear_lr: float | None

    def linear_head_parameters(self) -> list[nn.Parameter]: ...


def param_groups(model: nn.Module, name: OptimizerName) -> list[ParamGroup]:
    """The optimizer's parameter groups for ``model``: one, or, for a model with a linear head
    (:class:`HasLinearHead`, ``linear_lr`` set) under ``sgd``, ``adam`` or ``adamw``, the rest
    first and the linear head second, stepped as plain SGD at ``model.linear_lr``.

    Why: one Adam step per sample moves every weight by about ``lr`` whatever its gradient, so
    a linear model that has converged keeps jittering by ``lr``; SGD's steps shrink with the
    gradient (bench/README.md, Peers). Under Adam the second group is marked ``"sgd": True``
    and :func:`build_optimizer` makes the Adam of :mod:`.sgd_groups`, which steps it as plain
    SGD: one optimizer, so checkpoints, the schedule and the distributed step treat it as any
    other. The schedule scales both groups.

    >>> from streamtrain.sample.spec import SampleSpec
    >>> from streamtrain.train.models import build_model
    >>> spec = SampleSpec(feature_shape=(3,), task="binary")
    >>> len(param_groups(build_model("auto", spec, {"linear_lr": None}), "adam"))
    1
    >>> model = build_model("auto", spec, {})
    >>> [sorted(set(group) - {"params"}) for group in param_groups(model, "adam")]
    [[], ['lr', 'sgd', 'weight_decay']]
    >>> sorted(param_groups(model, "sgd")[1])
    ['lr', 'momentum', 'params', 'weight_decay']
    """
    if (
        not isinstance(model, HasLinearHead)
        or model.linear_lr is None
        or name not in ("sgd", "adam", "adamw")
    ):
        return [{"params": list(model.parameters())}]
    linear = model.linear_head_parameters()
    ids = {id(p) for p in linear}
    rest = [p for p in model.parameters() if id(p) not in ids]
    # no weight decay on the linear head (river's linear models: l2 = 0)
    group: ParamGroup = {"params": linear, "lr": model.linear_lr, "weight_decay": 0.0}
    if name == "sgd":
        group["momentum"] = 0.0
    else:
        group["sgd"] = True
    return [{"params": rest}, group]


# per parameter group (in param_groups' order): the multiplier of its scheduled learning rate
# for a step of the given number of samples
StepLrScales = Callable[[int], list[float]]


def step_lr_scales(model: nn.Module, name: OptimizerName, rule: StepSamples) -> StepLrScales | None:
    """How each of :func:`param_groups`' groups scales its learning rate with a step's samples
    (:func:`streamtrain.train.step_size.step_lr_scale`), or None (no scaling) unless the step
    rule is ``"auto"``, whose steps grow: every group by ``sqrt(m)``, and the plain-SGD linear
    head (``auto``'s second group) by ``m``, so its step is the sum of per-sample gradients.

    >>> from streamtrain.sample.spec import SampleSpec
    >>> from streamtrain.train.models import build_model
    >>> model = build_model("auto", SampleSpec(feature_shape=(3,), task="binary"), {})
    >>> step_lr_scales(model, "adam", "auto")(4), step_lr_scales(model, "adam", 8) is None
    ([2.0, 4.0], True)
    """
    if rule != "auto":
        return None
    # param_groups gives one group, or the rest and then the plain-SGD linear head
    rules: list[ScaleRule] = ["sqrt", "sum"] if len(param_groups(model, name)) == 2 else ["sqrt"]

    def scales(samples: int) -> list[float]:
        return [step_lr_scale(r, samples) for r in rules]

    return scales


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | list[ParamGroup],
    name: OptimizerName,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> Optimizer:
    """An optimizer by name over parameters or :func:`param_groups`. ``momentum`` applies to
    sgd and rmsprop only.

    Adam and AdamW use torch's fused kernel when every parameter is on one device type (CPU or
    CUDA): one call per parameter group instead of about ten small operations per tensor
    (``Adam.step`` led a profile of a batch-16 step; bench/README.md, Peers).

    >>> model = torch.nn.Linear(2, 1)
    >>> type(build_optimizer(model.parameters(), "sgd", 0.1, momentum=0.9)).__name__
    'SGD'
    """
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got lr={lr}")
    if momentum and name not in _MOMENTUM_USERS:
        raise ValueError(
            f"momentum={momentum} has no effect on {name!r}; it applies to sgd and rmsprop "
            "(set optimizer.momentum to 0 or pick one of those)"
        )
    listed = list(params)
    groups = [g for g in listed if isinstance(g, dict)]
    # bare parameters are one group, as torch makes of them (none: torch's own error)
    plist: list[ParamGroup] = groups or ([{"params": listed}] if listed else [])
    tensors = [p for g in plist for p in g["params"]]
    if name == "sgd":
        return torch.optim.SGD(plist, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        kinds = {p.device.type for p in tensors}
        fused = (
            len(kinds) == 1
            and kinds <= {"cpu", "cuda"}
            and all(p.is_floating_point() for p in tensors)
        )
        plain = any(g.get("sgd") for g in plist)  # param_groups' plain-SGD linear head
        cls: type[Optimizer]
        if name == "adam":
            cls = AdamSGD if plain else torch.optim.Adam
        else:
            cls = AdamWSGD if plain else torch.optim.AdamW
        return cls(plist, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "adagrad":
        return torch.optim.Adagrad(plist, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(plist, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use sgd, adam, adamw, adagrad or rmsprop")


def lr_factor(
    schedule: ScheduleName, schedule_steps: int, warmup_steps: int, step_gamma: float = 0.1
) -> Callable[[int], float]:
    """The multiplier of the base learning rate at applied step ``k`` (a pure function).

    Linear warmup over ``warmup_steps``, then: ``constant`` 1; ``cosine`` half-cosine from 1
    toward 0 restarting every ``schedule_steps`` (a stream has no end to anneal to);
    ``step`` times ``step_gamma`` every ``schedule_steps``; ``inverse_sqrt``
    ``1 / sqrt(1 + k / schedule_steps)``.

    >>> f = lr_factor("step", schedule_steps=10, warmup_steps=0)
    >>> f(0), f(10), round(f(25), 6)
    (1.0, 0.1, 0.01)
    """
    if schedule_steps < 1:
        raise ValueError(f"schedule_steps must be >= 1, got {schedule_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if schedule not in ("constant", "cosine", "step", "inverse_sqrt"):
        raise ValueError(
            f"unknown schedule {schedule!r}; use constant, cosine, step or inverse_sqrt"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        k = step - warmup_steps
        if schedule == "cosine":
            phase = (k % schedule_steps) / schedule_steps
            return 0.5 * (1.0 + math.cos(math.pi * phase))
        if schedule == "step":
            return float(step_gamma ** (k // schedule_steps))
        if schedule == "inverse_sqrt":
            return 1.0 / math.sqrt(1.0 + k / schedule_steps)
        return 1.0

    return factor


def build_scheduler(
    optimizer: Optimizer,
    schedule: ScheduleName,
    schedule_steps: int,
    warmup_steps: int,
) -> LRScheduler:
    """A LambdaLR over :func:`lr_factor`; its only state is ``last_epoch`` (applied steps).

    Checkpoints save its state dict without the function and load it back into a scheduler
    built here (``checkpoint/components.py``): the one resume path.

    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    >>> sched = build_scheduler(opt, "constant", 100, warmup_steps=4)
    >>> opt.param_groups[0]["lr"]
    0.25
    """
    return LambdaLR(optimizer, lr_factor(schedule, schedule_steps, warmup_steps))
