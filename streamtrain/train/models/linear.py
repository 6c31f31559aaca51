"""``linear``: logistic, softmax or linear regression depending on the task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._head import OutputLayer
from streamtrain.train.models._params import parse_params
from streamtrain.train.models.standardize import StandardizeParams, make_standardizer
from streamtrain.train.models.target_scale import make_target_scaler


class LinearParams(StandardizeParams):
    """Only the standardisation switches (:class:`StandardizeParams`); the class exists so
    typos are still errors."""


class LinearModel(nn.Module):
    """Flatten the features, optionally standardise them online, one affine map to the outputs.

    With ``standardize`` (the default) each flattened feature is standardised by its running
    mean and variance (:class:`OnlineStandardize`, statistics in ``state_dict``).

    >>> spec = SampleSpec(feature_shape=(2, 3), task="multiclass", num_classes=4)
    >>> LinearModel(spec)(torch.zeros(5, 2, 3)).shape
    torch.Size([5, 4])
    >>> [key for key in LinearModel(spec).state_dict() if key.startswith("standardize")]
    ['standardize.mean', 'standardize.var', 'standardize.count']
    """

    def __init__(self, spec: SampleSpec, params: LinearParams | None = None) -> None:
        super().__init__()
        params = params or LinearParams()
        self.standardize = make_standardizer(params, (spec.feature_size,))
        self.head = OutputLayer(spec.feature_size, spec, make_target_scaler(params, spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.standardize is not None:
            x = self.standardize(x)
        out: torch.Tensor = self.head(x)
        return out


def build_linear(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    return LinearModel(spec, parse_params("linear", LinearParams, params))
