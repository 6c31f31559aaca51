"""Test doubles for the serving path: a tiny model and weights that identify their version.

``version_weights(model, v)`` fills every tensor with ``v`` (scaled), so any output tells
which snapshot computed it; ``expected_value`` recomputes that output offline.

>>> model = tiny_regression_model(features=3)
>>> tensors = version_weights(model, 5)
>>> round(expected_value(5, [1.0, 1.0, 1.0]), 6) == round(
...     float(load_copy(model, tensors)(torch.ones(1, 3)).item()), 6)
True
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

_SCALE = 1e-3  # keeps outputs of versions in the thousands well inside FP32 precision


def tiny_regression_model(features: int = 4) -> nn.Module:
    """A linear model: output = w · x + b, one output."""
    return nn.Sequential(nn.Linear(features, 1))


def version_weights(model: nn.Module, version: int) -> dict[str, torch.Tensor]:
    """A snapshot for ``model`` whose every weight equals ``version * 1e-3``."""
    return {
        name: torch.full_like(t, version * _SCALE, device="cpu")
        for name, t in model.state_dict().items()
    }


def expected_value(version: int, row: Sequence[float]) -> float:
    """What ``tiny_regression_model`` with ``version_weights(version)`` answers for ``row``."""
    w = torch.tensor(version * _SCALE, dtype=torch.float32)
    x = torch.tensor(list(row), dtype=torch.float32)
    return float((w * x).sum() + w)


def load_copy(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` holding ``tensors`` (to compute reference outputs offline)."""
    clone = copy.deepcopy(model)
    clone.load_state_dict(tensors)
    return clone
