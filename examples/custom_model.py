"""A user model plugin: a residual MLP, built by ``custom_model:build_residual_mlp``.

Use it with ``model.name: custom_model:build_residual_mlp`` and this folder on ``PYTHONPATH``
(or package it and name ``yourpackage.models:build_residual_mlp``). Check it before deploying::

    from streamtrain.sample.spec import SampleSpec
    from streamtrain.testing import check_model
    check_model("custom_model:build_residual_mlp", SampleSpec(feature_shape=(16,), task="binary"))

>>> from streamtrain.sample.spec import SampleSpec
>>> spec = SampleSpec(feature_shape=(16,), task="multiclass", num_classes=3)
>>> build_residual_mlp(spec, {"width": 32, "blocks": 2})(torch.zeros(4, 16)).shape
torch.Size([4, 3])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models.standardize import OnlineStandardize


class ResidualMLPParams(BaseModel):
    """Hyperparameters (``model.params``); unknown names are errors, so typos cannot hide."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = Field(64, ge=1, description="Width of the residual stream.")
    blocks: int = Field(2, ge=1, description="Residual blocks.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside each block.")
    standardize: bool = Field(True, description="Standardise input features online.")


class ResidualBlock(nn.Module):
    """``x + Linear(GELU(Linear(LayerNorm(x))))``: pre-norm keeps deep stacks trainable."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, 2 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


class ResidualMLP(nn.Module):
    """Flatten, standardise online, project to ``width``, residual blocks, output layer.

    Output convention (what streamtrain's loss, metrics and server expect) for ``n`` samples:
    multiclass logits ``[n, num_classes]``, binary logits ``[n]``, regression
    ``[n, target_dim]``, all float32.
    """

    def __init__(self, spec: SampleSpec, params: ResidualMLPParams) -> None:
        super().__init__()
        features = spec.feature_size
        # Registered buffers (inside OnlineStandardize) travel with snapshots and checkpoints.
        self.standardize = OnlineStandardize((features,)) if params.standardize else None
        self.embed = nn.Linear(features, params.width)
        self.blocks = nn.Sequential(
            *(ResidualBlock(params.width, params.dropout) for _ in range(params.blocks))
        )
        self.norm = nn.LayerNorm(params.width)
        outputs = {"multiclass": spec.num_classes, "binary": 1}.get(spec.task, spec.target_dim)
        self.head = nn.Linear(params.width, outputs)
        self._binary = spec.task == "binary"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.standardize is not None:
            x = self.standardize(x)
        out: torch.Tensor = self.head(self.norm(self.blocks(self.embed(x))))
        # squeeze(-1), not squeeze(): a batch of one must stay [1]
        return out.squeeze(-1) if self._binary else out


def build_residual_mlp(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    """The factory streamtrain calls: ``(spec, params) -> nn.Module``, weights allocated here."""
    try:
        parsed = ResidualMLPParams.model_validate(dict(params))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'params'}: {err['msg']}" for err in exc.errors()
        )
        valid = ", ".join(
            f"{name}={field.default!r}" for name, field in ResidualMLPParams.model_fields.items()
        )
        raise ValueError(
            f"invalid params for custom_model: {problems}. Valid params: {valid}"
        ) from None
    return ResidualMLP(spec, parsed)
