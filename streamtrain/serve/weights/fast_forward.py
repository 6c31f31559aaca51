"""A cheaper forward pass for the built-in dense models: torch's functional ops called directly.

At batch 1 a served MLP's arithmetic is a few microseconds; most of its forward is Python
around it: ``nn.Module.__call__`` (hook checks) for every layer, ``Sequential`` iteration,
attribute look-ups through ``nn.Module.__getattr__``. Measured in process (MLP 32 → 256 → 256
→ 10 with standardisation, one torch thread): the model's forward 66 µs, the same ops called
directly 25 µs, with bit-identical outputs (the same ATen ops on the same tensors in the same
order: ``nn.Linear`` *is* ``torch._C._nn.linear``, ``nn.ReLU`` is ``relu``).

Why not a traced or compiled forward (measured on the same model, in process, one thread):
``torch.jit.trace`` runs in 25 µs (23 µs frozen), no faster than this, and records the
standardiser's served scale (:meth:`OnlineStandardize._serving_scale`, kept per weights
version) as a constant: after the statistics change in place (as a swap changes them) the trace
answers differently from the model (and traced cold it fails its own check, the first call
computing the scale and the next reading it); ``torch.compile`` took 82 s
to compile and then 160 µs per call (its guards and wrappers cost more than the ops at this
size). A direct forward reads the live tensors on every call instead:

* parameters and buffers are looked up in their module's ``_parameters`` / ``_buffers`` dict on
  every call, so a swap (the slot ``copy_``-s into the same tensors) and even a replaced
  tensor are seen by the next request;
* the standardiser's scale comes from its own ``_serving_scale``, which recomputes when the
  statistics' version counters move.

:func:`dense_forward` builds one only for a model whose every module it knows exactly (by type,
not ``isinstance``: a subclass may override ``forward``), in eval mode, with no hooks and no
parameter that needs a gradient; any other model gets None and is called as itself.
:class:`ForwardCache` remembers the answer per model object.

>>> from streamtrain.sample.spec import SampleSpec
>>> from streamtrain.train.models.mlp import MLP, MLPParams
>>> model = MLP(SampleSpec((4,), "multiclass", num_classes=3), MLPParams(hidden_sizes=(8,)))
>>> forward = dense_forward(model.eval().requires_grad_(False))
>>> x = torch.randn(2, 4)
>>> forward is not None and torch.equal(forward(x), model(x))
True
>>> dense_forward(torch.nn.Sequential(torch.nn.Linear(4, 3))) is None  # not a built-in
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torch.nn.modules import module as module_globals

from streamtrain.train.models._head import OutputLayer
from streamtrain.train.models.linear import LinearModel
from streamtrain.train.models.mlp import MLP
from streamtrain.train.models.standardize import OnlineStandardize

Forward = Callable[[torch.Tensor], torch.Tensor]
Step = Callable[[torch.Tensor], torch.Tensor]

_LINEAR = torch._C._nn.linear  # what nn.Linear.forward calls (F.linear)
_GELU = torch._C._nn.gelu  # what nn.GELU.forward calls (F.gelu)


def dense_forward(model: nn.Module) -> Forward | None:
    """The direct forward of a built-in ``mlp`` or ``linear`` model, or None when ``model`` is
    anything else (or has hooks, is training, or has a parameter that needs a gradient)."""
    exact = type(model) in (MLP, LinearModel)  # a subclass may have its own forward
    if not (exact and isinstance(model, (MLP, LinearModel)) and _plain(model)):
        return None
    body: list[Step] = []
    if type(model) is MLP:
        if type(model.body) is not nn.Sequential:
            return None
        for layer in model.body:
            step = _step(layer)
            if step is None:
                return None
            if step is torch.relu_ and not body:
                step = torch.relu  # never in place on the caller's (or a view of its) input
            if step is not _identity:
                body.append(step)
    standardize = _standardize(model.standardize)
    head = _output(model.head)
    if standardize is None or head is None:
        return None
    steps = (*((standardize,) if standardize is not _identity else ()), *body, head)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            x = x.flatten(1)
        for step in steps:
            x = step(x)
        return x

    return forward


def _plain(model: nn.Module) -> bool:
    """Eval mode, no hooks anywhere (a hook would be skipped), nothing needing a gradient."""
    if (
        module_globals._global_forward_hooks
        or module_globals._global_forward_pre_hooks
        or module_globals._global_forward_hooks_always_called
    ):
        return False
    for each in model.modules():
        if each.training or each._forward_hooks or each._forward_pre_hooks:
            return False
    return not any(param.requires_grad for param in model.parameters())


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _step(layer: nn.Module) -> Step | None:
    """One hidden-layer module as a direct step (``_identity`` for eval-mode dropout)."""
    kind = type(layer)
    if kind is nn.Linear:
        return _linear(layer)
    if kind is nn.ReLU:
        # in place on the fresh output of the step before (the same values, no allocation);
        # dense_forward makes a first step out of place
        return torch.relu_
    if kind is nn.Tanh:
        return torch.tanh
    if kind is nn.GELU:
        approximate = str(layer.approximate)
        return lambda x: _GELU(x, approximate=approximate)
    if kind is nn.Dropout:  # eval mode (checked by _plain): the identity
        return _identity
    return None


def _linear(layer: nn.Module) -> Step:
    params = cast(dict[str, torch.Tensor], layer._parameters)  # bias None without one

    def step(x: torch.Tensor) -> torch.Tensor:
        return _LINEAR(x, params["weight"], params["bias"])

    return step


def _standardize(layer: nn.Module | None) -> Step | None:
    """``OnlineStandardize.forward`` in serving: ``(x - mean) * scale`` with its kept scale."""
    if layer is None:
        return _identity
    if type(layer) is not OnlineStandardize:
        return None
    buffers, scale = cast(dict[str, torch.Tensor], layer._buffers), layer._serving_scale
    return lambda x: (x - buffers["mean"]) * scale()


def _output(layer: nn.Module) -> Step | None:
    """``OutputLayer.forward``: the projection, the target scaler (a module call), squeeze."""
    if type(layer) is not OutputLayer or type(layer.proj) is not nn.Linear:
        return None
    proj = _linear(layer.proj)
    targets, squeeze = layer.targets, layer._squeeze
    if targets is None and not squeeze:
        return proj

    def step(x: torch.Tensor) -> torch.Tensor:
        out = proj(x)
        if targets is not None:
            out = targets(out)
        return out.squeeze(-1) if squeeze else out

    return step


class ForwardCache:
    """Per model object: its direct forward, or the model itself when it has none.

    Decided when a model is first served: a hook registered or a mode changed afterwards is not
    seen (serving does neither; hooks and ``train()`` belong to the trainer's models).

    Keyed by ``id`` with the model held beside its forward, so an id is never reused while
    its entry lives; bounded, as it holds its models alive: for the slot's two copies, which
    live as long as the slot (retained versions keep their forward beside their model).

    >>> cache = ForwardCache()
    >>> model = torch.nn.Linear(2, 1)
    >>> cache.of(model) is model  # no direct forward for it: called as itself
    True
    """

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._known: dict[int, tuple[nn.Module, Forward]] = {}

    def of(self, model: nn.Module) -> Forward:
        known = self._known.get(id(model))
        if known is not None and known[0] is model:
            return known[1]
        forward: Forward = dense_forward(model) or model
        if len(self._known) >= self._keep:
            self._known.clear()  # a dict swap-in, not per-entry eviction: rare and cheap
        self._known[id(model)] = (model, forward)
        return forward
