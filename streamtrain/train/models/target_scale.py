"""Regression targets on a standard scale inside the model, predictions in the original units.

A network that starts near 0 and is trained with Adam at a small learning rate takes tens of
thousands of steps to reach targets around 40 or 370; on standardised targets it starts at the
running mean. The statistics are buffers of the model's output layer, so snapshots carry them
to the server and checkpoints restore them: whatever calls ``model(x)`` (the trainer's
prequential score, the server's predictions) gets values in the targets' units.
"""

from __future__ import annotations

import torch
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._capture import CapturesInput
from streamtrain.train.models.standardize import OnlineStandardize, StandardizeParams


class TargetStandardize(OnlineStandardize, CapturesInput):
    """Running mean and variance of the targets; ``forward`` de-standardises outputs.

    Unlike the feature standardiser, ``forward`` never updates the statistics (it sees model
    outputs, not targets): the learner calls :meth:`observe` with each batch's targets, then
    computes the loss between the network's standardised output (this layer's input) and
    :meth:`standardize` of the targets. A target whose variance is (near) zero so far uses a
    scale of 1, so the first predictions are the running mean plus the network's raw output.

    >>> layer = TargetStandardize(1)
    >>> layer.observe(torch.tensor([[30.0], [50.0]]))
    >>> layer(torch.tensor([[0.0], [1.0]])).tolist()
    [[40.0], [50.0]]
    >>> layer.standardize(torch.tensor([[60.0]])).tolist()
    [[2.0]]
    """

    def __init__(self, target_dim: int, momentum: float | None = None) -> None:
        super().__init__((target_dim,), momentum=momentum)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.keep_input(z)  # the learner's loss compares it with the standardised targets
        return z * self.scale() + self.mean

    def scale(self) -> torch.Tensor:
        """The standard deviation per target, 1 where it is (near) zero so far."""
        return torch.where(self.is_flat(), 1.0, self.var.sqrt())

    def standardize(self, targets: torch.Tensor) -> torch.Tensor:
        """``targets`` on the scale the network learns: the inverse of ``forward``."""
        return (targets - self.mean) / self.scale()


def make_target_scaler(params: StandardizeParams, spec: SampleSpec) -> TargetStandardize | None:
    """The target scaler for a regression ``spec`` with ``scale_targets`` on, else None."""
    if spec.task != "regression" or not params.scale_targets:
        return None
    return TargetStandardize(spec.target_dim, momentum=params.standardize_momentum)


def find_target_scaler(model: nn.Module) -> TargetStandardize | None:
    """The model's target scaler, if it has one (built-ins with ``scale_targets``)."""
    found = [module for module in model.modules() if isinstance(module, TargetStandardize)]
    if len(found) > 1:
        raise ValueError(
            f"the model holds {len(found)} TargetStandardize layers; one output layer may "
            "de-standardise the targets"
        )
    return found[0] if found else None
