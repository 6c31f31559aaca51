"""The output layer every built-in ends with, enforcing the output convention."""

from __future__ import annotations

import torch
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._params import output_width
from streamtrain.train.models.target_scale import TargetStandardize


class OutputLayer(nn.Module):
    """Linear map to the task's outputs.

    Convention for ``n`` samples: multiclass -> logits ``[n, num_classes]``; binary -> logits
    ``[n]``; regression -> ``[n, target_dim]``, de-standardised by ``targets`` when given (the
    projection then learns standardised targets, see :mod:`.target_scale`).

    >>> layer = OutputLayer(4, SampleSpec(feature_shape=(4,), task="binary"))
    >>> layer(torch.zeros(3, 4)).shape
    torch.Size([3])
    """

    def __init__(
        self, in_features: int, spec: SampleSpec, targets: TargetStandardize | None = None
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, output_width(spec))
        self.targets = targets
        self._squeeze = spec.task == "binary"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x)
        if self.targets is not None:
            out = self.targets(out)
        # squeeze(-1), never squeeze(): a batch of one must stay [1], not become a scalar
        return out.squeeze(-1) if self._squeeze else out


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, gelu, tanh)."""
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}; use relu, gelu or tanh")
