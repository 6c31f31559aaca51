"""``auto``: a linear head and an MLP head over the same standardised features, one module.

``combine: hedge`` (the default) trains both heads on their own loss every step and serves
their Hedge mixture (:mod:`.hedge`): a stream whose concept is linear is predicted at the
linear model's pace, one the MLP fits better moves the weight to the MLP within a few hundred
samples. ``combine: sum`` is wide & deep (Cheng et al., 2016): the linear path's output is
added to the MLP's and both learn from the loss of the sum.

By default (``linear_lr`` 0.01) the linear head is river's LogisticRegression /
LinearRegression: a layer of its own (``wide``), zero-initialised, which
``optim.param_groups`` steps as plain SGD at 0.01, so on a linear concept the best head
scores what river's linear model scores; the mix then weighs the heads by their recent wrong
predictions (``hedge_loss: error``), the accuracy the stream is scored by. Under the Hedge
mix the linear head's output records no graph: the learner writes its gradient in closed form
(``train/wide_head.py``), and under Adam its group is plain SGD (``train/sgd_groups.py``).
With ``linear_lr`` None the linear head instead shares the MLP's first matrix multiply (its
rows are the first ``width`` outputs of ``first``) and its Adam. Measured in bench/README.md
(Peers) and docs/models.md (Defaults and the evidence).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._head import activation
from streamtrain.train.models._params import output_width, parse_params
from streamtrain.train.models.hedge import HedgeMixer
from streamtrain.train.models.mlp import MLPParams
from streamtrain.train.models.standardize import make_standardizer
from streamtrain.train.models.target_scale import make_target_scaler


class AutoParams(MLPParams):
    """The MLP head's parameters (``hidden_sizes``, ``activation``, ``dropout``), the
    standardisation switches, and how the two heads combine."""

    combine: Literal["hedge", "sum"] = Field(
        "hedge", description="hedge: serve the Hedge mixture; sum: wide & deep."
    )
    hedge_eta: float = Field(0.5, gt=0.0, description="Hedge learning rate on the head losses.")
    hedge_window: int = Field(
        200, ge=1, description="Samples over which a head's loss is remembered (discount)."
    )
    hedge_loss: Literal["error", "task"] = Field(
        "error",
        description=(
            "What the mix weighs the heads by. error: classification heads by their wrong "
            "predictions (the accuracy a stream is scored by); task: by their task loss (log "
            "loss). Regression always uses its task loss."
        ),
    )
    linear_lr: float | None = Field(
        0.01,
        gt=0.0,
        description=(
            "The linear head is its own zero-initialised layer and parameter group, plain SGD "
            "at this rate (river's LogisticRegression) under optimizer sgd/adam/adamw. None: "
            "the head shares the MLP's first matmul and its optimizer (the layout before "
            "0.01 became the default)."
        ),
    )


class LinearAndMLP(nn.Module):
    """Standardise, then a linear head and an MLP head, combined by ``params.combine``.

    >>> spec = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)
    >>> model = LinearAndMLP(spec, AutoParams(hidden_sizes=(8,)))
    >>> model(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    >>> [name for name, _ in model.named_parameters() if name.startswith("wide")]
    ['wide.weight', 'wide.bias']
    >>> fused = LinearAndMLP(spec, AutoParams(hidden_sizes=(8,), linear_lr=None))
    >>> sorted(k for k in fused.state_dict() if not k.startswith("standardize"))
    ['deep.bias', 'deep.weight', 'first.bias', 'first.weight', 'head.mixer.losses']
    """

    def __init__(self, spec: SampleSpec, params: AutoParams) -> None:
        super().__init__()
        if not params.hidden_sizes or min(params.hidden_sizes) < 1:
            raise ValueError(
                f"hidden_sizes {list(params.hidden_sizes)} must be one or more positive widths "
                "for model 'auto' (its MLP head); use model 'linear' for a linear model alone"
            )
        self.standardize = make_standardizer(params, (spec.feature_size,))
        self.width = output_width(spec)
        sizes = params.hidden_sizes
        self.linear_lr = params.linear_lr
        # one matmul gives the linear head's outputs and the MLP's first hidden layer, unless
        # the linear head learns at its own rate: a parameter group holds whole tensors
        self.wide = None if self.linear_lr is None else nn.Linear(spec.feature_size, self.width)
        if self.wide is not None:
            # river's linear models start from zero weights; a random start costs a linear
            # concept up to 0.01 accuracy over the first thousands of samples (docs/models.md)
            nn.init.zeros_(self.wide.weight)
            nn.init.zeros_(self.wide.bias)
        fused = self.width if self.wide is None else 0
        self.first = nn.Linear(spec.feature_size, fused + sizes[0])
        layers: list[nn.Module] = [activation(params.activation)]
        for before, size in itertools.pairwise(sizes):
            if params.dropout > 0:
                layers.append(nn.Dropout(params.dropout))
            layers += [nn.Linear(before, size), activation(params.activation)]
        if params.dropout > 0:
            layers.append(nn.Dropout(params.dropout))
        self.body = nn.Sequential(*layers)
        self.deep = nn.Linear(sizes[-1], self.width)
        self.head = CombinedHead(spec, params)
        # under the Hedge mix the linear head learns from its own loss alone, whose gradient
        # the learner writes in closed form (train/wide_head.py): its output needs no graph
        self._wide_closed_form = self.wide is not None and self.head.mixer is not None

    def linear_head_parameters(self) -> list[nn.Parameter]:
        """The linear head's own weights, stepped as plain SGD (``optim.param_groups``); none
        when it shares the first matmul (``linear_lr`` unset)."""
        return [] if self.wide is None else list(self.wide.parameters())

    def closed_form_linear_head(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(weight, bias)`` of the linear head when its output has no graph and the learner
        writes its gradient in closed form (Hedge mix, ``linear_lr`` set), else None."""
        if not self._wide_closed_form or self.wide is None:
            return None
        return self.wide.weight, self.wide.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.standardize is not None:
            x = self.standardize(x)
        hidden = self.first(x)
        if self._wide_closed_form:
            deep = self.deep(self.body(hidden))
            wide_layer = self.wide
            assert wide_layer is not None
            # the linear head and the mix record no graph (the heads' gradients are written in
            # closed form, train/wide_head.py): grad mode off as torch.no_grad() turns it off,
            # without its two objects per call (this runs every step); a local, so threads
            # serving at once each restore their own
            enabled = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
            try:
                wide = F.linear(x, wide_layer.weight, wide_layer.bias)
                # the head's own work without its module call (a third of the mix's cost at
                # batch 1); the mixer inside it is still called as a module (hooks see it)
                closed: torch.Tensor = self.head.combine(wide, deep, x)
            finally:
                torch._C._set_grad_enabled(enabled)
            return closed
        if self.wide is None:
            wide, hidden = hidden[:, : self.width], hidden[:, self.width :]
        else:
            wide = self.wide(x)
        out: torch.Tensor = self.head(wide, self.deep(self.body(hidden)))
        return out


class CombinedHead(nn.Module):
    """The two heads' outputs to the task's: Hedge mixture or sum, then (regression) the
    targets' de-standardisation, then the output convention. Its state is ``head.mixer.*``
    and ``head.targets.*``, as every built-in's output layer is ``head``."""

    def __init__(self, spec: SampleSpec, params: AutoParams) -> None:
        super().__init__()
        self.mixer = (
            HedgeMixer(
                2,
                spec,
                eta=params.hedge_eta,
                window=params.hedge_window,
                criterion=params.hedge_loss,
            )
            if params.combine == "hedge"
            else None
        )
        self.targets = make_target_scaler(params, spec)
        self._squeeze = spec.task == "binary"

    def forward(
        self, wide: torch.Tensor, deep: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.combine(wide, deep, features)

    def combine(
        self, wide: torch.Tensor, deep: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`forward`'s work; ``features``: the linear head's input when its output
        ``wide`` has no graph."""
        out: torch.Tensor
        if self.mixer is not None:
            out = self.mixer(wide, deep, features=features)  # binary: already the logits [n]
        else:
            out = wide + deep
            if self._squeeze:
                # squeeze(-1), never squeeze(): a batch of one must stay [1], not a scalar
                out = out.squeeze(-1)
        if self.targets is not None:  # regression only: never squeezed
            out = self.targets(out)
        return out


def build_auto(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    return LinearAndMLP(spec, parse_params("auto", AutoParams, params))
