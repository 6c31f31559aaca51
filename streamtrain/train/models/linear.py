"""``linear``: logistic, softmax or linear regression depending on the task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from streamtrain.spec import SampleSpec
from streamtrain.train.models._head import OutputLayer
from streamtrain.train.models._params import ModelParams, parse_params


class LinearParams(ModelParams):
    """``linear`` takes no hyperparameters; the class exists so typos are still errors."""


class LinearModel(nn.Module):
    """Flatten the features, one affine map to the task's outputs.

    >>> spec = SampleSpec(feature_shape=(2, 3), task="multiclass", num_classes=4)
    >>> LinearModel(spec)(torch.zeros(5, 2, 3)).shape
    torch.Size([5, 4])
    """

    def __init__(self, spec: SampleSpec) -> None:
        super().__init__()
        self.head = OutputLayer(spec.feature_size, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(x.flatten(1))
        return out


def build_linear(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    parse_params("linear", LinearParams, params)
    return LinearModel(spec)
