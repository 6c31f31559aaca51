"""Online feature standardisation in front of a built-in model: ``(x - mean) / sqrt(var + eps)``.

The running statistics are registered buffers, so they are part of ``state_dict()``: snapshots
carry to the server exactly the statistics the trainer had at that version, checkpoints restore
them, and a rollback of the non-finite guard restores them with the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from torch import nn

from streamtrain.train.models._params import ModelParams

EPS = 1e-5


class StandardizeParams(ModelParams):
    """The standardisation hyperparameters every built-in accepts (each sets its own default
    for ``standardize``)."""

    standardize: bool = Field(
        False, description="Standardise the input features online before the network."
    )
    standardize_momentum: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description=(
            "None: cumulative mean/variance over the whole stream. A float m: cumulative for "
            "the first ~1/m samples, then an exponential moving average forgetting a fraction "
            "m per sample (a window of ~1/m samples, whatever the batch size)."
        ),
    )


class OnlineStandardize(nn.Module):
    """Per-feature running mean and variance, updated from each training batch.

    Ordering inside ``forward`` (the prequential argument):

    1. Normalise ``x`` with the statistics as they are *before* this batch, in either mode.
    2. Only in training mode, and only after step 1, fold the batch into the statistics. So the
       one train-mode forward ``Learner.learn`` runs scores the batch with the pre-batch
       statistics, exactly as an eval-mode forward would: train and eval compute the same
       function and no separate scoring pass is needed.

    The update is the exact merge of the running and batch moments (Chan et al.): with weight
    ``w`` for the batch, ``mean += w * d`` and ``var = (1 - w) var + w var_b + w (1 - w) d^2``
    where ``d = mean_b - mean``. Cumulative: ``w = n_b / (count + n_b)``. With momentum ``m``,
    ``w`` is never below ``1 - (1 - m)^n_b``. A batch with a non-finite value is not folded in
    (checked on the device, no host synchronisation): one bad record cannot poison the
    statistics for the rest of the stream.

    ``shared_dims`` are sample dimensions that share statistics: ``()`` gives every element its
    own (tabular features), ``(0,)`` one per feature of a ``(T, F)`` sequence, ``(1, 2)`` one per
    channel of a ``(C, H, W)`` image.

    >>> layer = OnlineStandardize((2,))
    >>> _ = layer(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))  # training mode: learns the batch
    >>> layer.mean.tolist(), layer.var.tolist(), int(layer.count)
    ([2.0, 20.0], [1.0, 100.0], 2)
    >>> _ = layer.eval()
    >>> layer(torch.tensor([[4.0, 0.0]])).round(decimals=3).tolist()
    [[2.0, -2.0]]
    """

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        sample_shape: Sequence[int],
        shared_dims: Sequence[int] = (),
        momentum: float | None = None,
        eps: float = EPS,
    ) -> None:
        super().__init__()
        if momentum is not None and not 0.0 < momentum < 1.0:
            raise ValueError(f"standardize_momentum must be in (0, 1) or None, got {momentum}")
        bad = [d for d in shared_dims if not 0 <= d < len(sample_shape)]
        if bad:
            raise ValueError(f"shared_dims {tuple(bad)} are not dimensions of {sample_shape}")
        stat_shape = [1 if d in shared_dims else s for d, s in enumerate(sample_shape)]
        self.momentum = momentum
        self.eps = eps
        self._batch_dims = (0, *(d + 1 for d in shared_dims))
        self.register_buffer("mean", torch.zeros(stat_shape))
        self.register_buffer("var", torch.ones(stat_shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x - self.mean) * torch.rsqrt(self.var + self.eps)
        if self.training and x.shape[0] > 0:
            self._fold_in(x.detach())
        return out

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mean.shape)}, momentum={self.momentum}, eps={self.eps}"

    @torch.no_grad()
    def _fold_in(self, x: torch.Tensor) -> None:
        n = int(x.shape[0])
        batch_var, batch_mean = torch.var_mean(
            x.to(self.mean.dtype), dim=self._batch_dims, correction=0, keepdim=True
        )
        batch_var, batch_mean = batch_var.squeeze(0), batch_mean.squeeze(0)
        total = self.count + n
        weight = n / total.to(self.mean.dtype)
        if self.momentum is not None:
            weight = weight.clamp(min=1.0 - (1.0 - self.momentum) ** n)
        delta = batch_mean - self.mean
        mean = self.mean + weight * delta
        var = (1 - weight) * self.var + weight * batch_var + weight * (1 - weight) * delta**2
        finite = torch.isfinite(batch_mean).all() & torch.isfinite(batch_var).all()
        # copy_ in place: the serving slot's copy targets and the guard's good state hold
        # references to these exact tensors
        self.mean.copy_(torch.where(finite, mean, self.mean))
        self.var.copy_(torch.where(finite, var, self.var))
        self.count.copy_(torch.where(finite, total, self.count))


def make_standardizer(
    params: StandardizeParams, sample_shape: Sequence[int], shared_dims: Sequence[int] = ()
) -> OnlineStandardize | None:
    """The layer ``params`` ask for, or None when standardisation is off."""
    if not params.standardize:
        return None
    return OnlineStandardize(sample_shape, shared_dims, momentum=params.standardize_momentum)
