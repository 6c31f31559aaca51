"""``transformer``: a small encoder over sequences ``(T, F)``, mean-pooled into the head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._head import OutputLayer
from streamtrain.train.models._params import parse_params, sequence_shape
from streamtrain.train.models.standardize import StandardizeParams, make_standardizer
from streamtrain.train.models.target_scale import make_target_scaler


class TransformerParams(StandardizeParams):
    """Plus ``standardize`` (per input feature, shared over time) / ``standardize_momentum``."""

    d_model: int = Field(32, ge=1)
    nhead: int = Field(4, ge=1)
    num_layers: int = Field(2, ge=1)
    dim_feedforward: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation: Literal["relu", "gelu"] = "gelu"

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerParams:
        if self.d_model % self.nhead:
            raise ValueError(f"d_model={self.d_model} must be a multiple of nhead={self.nhead}")
        return self


class TransformerNet(nn.Module):
    """Input projection + learned positional embedding -> TransformerEncoder -> mean over time.

    ``standardize=True`` puts :class:`OnlineStandardize` in front with one mean and variance
    per input feature, shared over the time steps. On by default: the pre-norm layers
    normalise each token, not each feature over the stream (digits read as 8 rows of 8
    features: +0.01 to +0.12 accuracy).

    >>> spec = SampleSpec(feature_shape=(6, 4), task="multiclass", num_classes=3)
    >>> TransformerNet(spec, TransformerParams())(torch.zeros(2, 6, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, spec: SampleSpec, params: TransformerParams) -> None:
        super().__init__()
        steps, features = sequence_shape("transformer", spec)
        self._steps = steps
        self.standardize = make_standardizer(params, (steps, features), shared_dims=(0,))
        self.embed = nn.Linear(features, params.d_model)
        self.position = nn.Parameter(torch.randn(1, steps, params.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            params.d_model,
            params.nhead,
            dim_feedforward=params.dim_feedforward,
            dropout=params.dropout,
            activation=params.activation,
            batch_first=True,
            norm_first=True,
        )
        # the nested-tensor fast path only applies to padded batches and warns with norm_first
        self.encoder = nn.TransformerEncoder(layer, params.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(params.d_model)
        self.head = OutputLayer(params.d_model, spec, make_target_scaler(params, spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self._steps, -1)
        if self.standardize is not None:
            x = self.standardize(x)
        h = self.embed(x) + self.position
        pooled = self.norm(self.encoder(h)).mean(dim=1)
        out: torch.Tensor = self.head(pooled)
        return out


def build_transformer(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    return TransformerNet(spec, parse_params("transformer", TransformerParams, params))
