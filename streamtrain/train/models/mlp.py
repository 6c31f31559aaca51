"""``mlp``: a multilayer perceptron over the flattened features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._head import OutputLayer, activation
from streamtrain.train.models._params import parse_params
from streamtrain.train.models.standardize import StandardizeParams, make_standardizer
from streamtrain.train.models.target_scale import make_target_scaler


class MLPParams(StandardizeParams):
    """Plus ``standardize`` / ``standardize_momentum`` (:class:`StandardizeParams`)."""

    hidden_sizes: tuple[int, ...] = Field((64,), description="Width of each hidden layer.")
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class MLP(nn.Module):
    """Flatten, optionally standardise online, then ``Linear -> activation -> Dropout`` per
    hidden layer, then the output layer.

    With ``standardize`` (the default) each flattened feature is standardised by its running
    mean and variance (:class:`OnlineStandardize`, statistics in ``state_dict``).

    >>> spec = SampleSpec(feature_shape=(16,), task="binary")
    >>> MLP(spec, MLPParams(hidden_sizes=(8, 8)))(torch.zeros(3, 16)).shape
    torch.Size([3])
    """

    def __init__(self, spec: SampleSpec, params: MLPParams) -> None:
        super().__init__()
        self.standardize = make_standardizer(params, (spec.feature_size,))
        layers: list[nn.Module] = []
        width = spec.feature_size
        for size in params.hidden_sizes:
            if size < 1:
                raise ValueError(f"hidden_sizes {params.hidden_sizes} must be positive widths")
            layers += [nn.Linear(width, size), activation(params.activation)]
            if params.dropout > 0:
                layers.append(nn.Dropout(params.dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = OutputLayer(width, spec, make_target_scaler(params, spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.standardize is not None:
            x = self.standardize(x)
        out: torch.Tensor = self.head(self.body(x))
        return out


def build_mlp(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    return MLP(spec, parse_params("mlp", MLPParams, params))
