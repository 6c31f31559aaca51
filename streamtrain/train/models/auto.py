"""``auto``: a linear head and an MLP head over the same standardised features, one module.

``combine: hedge`` (the default) trains both heads on their own loss every step and serves
their Hedge mixture (:mod:`.hedge`): a stream whose concept is linear is predicted at the
linear model's pace, one the MLP fits better moves the weight to the MLP within a few hundred
samples. ``combine: sum`` is wide & deep (Cheng et al., 2016): the linear path's output is
added to the MLP's and both learn from the loss of the sum. Either way the linear head shares
the MLP's first matrix multiply (its rows are the first ``width`` outputs of ``first``), so
it costs little more than the MLP alone. Measured in bench/README.md (Peers) and
docs/models.md (Defaults and the evidence).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Literal

import torch
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
    hedge_eta: float = Field(1.0, gt=0.0, description="Hedge learning rate on the head losses.")
    hedge_window: int = Field(
        500, ge=1, description="Samples over which a head's loss is remembered (discount)."
    )


class LinearAndMLP(nn.Module):
    """Standardise, then a linear head and an MLP head, combined by ``params.combine``.

    >>> spec = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)
    >>> model = LinearAndMLP(spec, AutoParams(hidden_sizes=(8,)))
    >>> model(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    >>> sorted(k for k in model.state_dict() if not k.startswith("standardize"))
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
        # one matmul gives the linear head's outputs and the MLP's first hidden layer
        self.first = nn.Linear(spec.feature_size, self.width + sizes[0])
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.standardize is not None:
            x = self.standardize(x)
        hidden = self.first(x)
        wide = hidden[:, : self.width]
        deep = self.deep(self.body(hidden[:, self.width :]))
        out: torch.Tensor = self.head(wide, deep)
        return out


class CombinedHead(nn.Module):
    """The two heads' outputs to the task's: Hedge mixture or sum, then (regression) the
    targets' de-standardisation, then the output convention. Its state is ``head.mixer.*``
    and ``head.targets.*``, as every built-in's output layer is ``head``."""

    def __init__(self, spec: SampleSpec, params: AutoParams) -> None:
        super().__init__()
        self.mixer = (
            HedgeMixer(2, spec, eta=params.hedge_eta, window=params.hedge_window)
            if params.combine == "hedge"
            else None
        )
        self.targets = make_target_scaler(params, spec)
        self._squeeze = spec.task == "binary"

    def forward(self, wide: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor
        if self.mixer is not None:
            out = self.mixer(torch.stack([wide, deep], dim=-1))
        else:
            out = wide + deep
        if self.targets is not None:
            out = self.targets(out)
        # squeeze(-1), never squeeze(): a batch of one must stay [1], not become a scalar
        return out.squeeze(-1) if self._squeeze else out


def build_auto(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    return LinearAndMLP(spec, parse_params("auto", AutoParams, params))
