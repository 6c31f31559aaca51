"""Online feature standardisation in front of a built-in model: ``(x - mean) / sqrt(var)``.

A feature whose variance is (near) zero so far contributes 0, as river's ``StandardScaler``
does: no ``1 / sqrt(eps)`` blow-up when a feature that was constant first moves. The running
statistics are registered buffers, so they are part of ``state_dict()``: snapshots
carry to the server exactly the statistics the trainer had at that version, checkpoints restore
them, and a rollback of the non-finite guard restores them with the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
from pydantic import Field
from torch import nn

from streamtrain.train.models._params import ModelParams

# A variance at or below REL_FLAT**2 * mean**2 + ABS_FLAT counts as zero. REL_FLAT is ~10x
# float32's relative resolution, so a constant feature at 736,389 (a date ordinal) whose merged
# variance is rounding noise stays flat; ABS_FLAT (a standard deviation of 1e-6) is what is left
# of a constant near zero. A genuine feature with std below both is treated as constant.
REL_FLAT = 1e-6
ABS_FLAT = 1e-12


# (batch, batch dims, keepdim) -> (samples, mean, variance) of the union of every rank's batch
MomentsReducer = Callable[
    [torch.Tensor, tuple[int, ...], bool], tuple[int, torch.Tensor, torch.Tensor]
]


class StandardizeParams(ModelParams):
    """The standardisation hyperparameters every built-in accepts.

    ``standardize`` defaults to True for every built-in, measured (prequential accuracy,
    seed 7, standardised minus raw): ``linear`` +0.01 to +0.06 at batch 1 and +0.05 to +0.13
    at batch 16 on hyperplane, SEA, phishing and digits (Agrawal, where no linear model does
    well: -0.02 / +0.00); ``mlp`` +0.01 to +0.04 at batch 1 and +0.02 to +0.05 at batch 16 on
    all five peers streams (bench/results/peers.md); ``cnn`` on digits as 1x8x8 images +0.04
    to +0.10 and ``rnn`` / ``transformer`` on digits as 8 rows of 8 +0.11 to +0.17 / +0.01 to
    +0.12, at batch 1, 16 and 128. A model that must see raw inputs sets it to False.

    ``scale_targets`` (regression only) standardises the targets the same way, inside the
    model's output layer (:class:`streamtrain.train.models.target_scale.TargetStandardize`):
    the network learns standardised targets and its outputs are de-standardised, so the
    prequential score and the server see the original units.

    ``standardize_momentum`` defaults to 0.001 (a window of ~1000 samples after a cumulative
    warm-up), measured on the peers bench: on its stationary-feature streams it matches the
    cumulative average to within 0.001 accuracy, and on the same streams with the features
    re-scaled and shifted mid-stream (a sensor recalibration) it beats cumulative by 0.03-0.05
    (hyperplane, batch 1 and 16; ~0.01 on SEA), while 0.0001 forgets too slowly and 0.01 is
    noisier (about -0.005).
    """

    standardize: bool = Field(
        True, description="Standardise the input features online before the network."
    )
    standardize_momentum: float | None = Field(
        0.001,
        gt=0.0,
        lt=1.0,
        description=(
            "A float m: cumulative mean/variance for the first ~1/m samples, then an "
            "exponential moving average forgetting a fraction m per sample (a window of ~1/m "
            "samples, whatever the batch size). None: cumulative over the whole stream."
        ),
    )
    scale_targets: bool = Field(
        True,
        description=(
            "Regression: learn standardised targets (running mean/variance, same momentum) and "
            "de-standardise the outputs, so predictions come out in the targets' units."
        ),
    )


class OnlineStandardize(nn.Module):
    """Per-feature running mean and variance, updated from each training batch.

    The statistics start empty (count 0, mean 0, variance 0) and the first batch sets them
    exactly, so after ``n`` samples they are the exact mean and (population) variance of those
    samples until the momentum regime takes over. A feature whose variance is zero so far
    (the very first batch, or a feature that has been constant) maps to 0.

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
    >>> layer(torch.tensor([[1.0, 10.0], [3.0, 30.0]])).tolist()  # no statistics yet: zeros
    [[0.0, 0.0], [0.0, 0.0]]
    >>> layer.mean.tolist(), layer.var.tolist(), int(layer.count)  # training mode learned them
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
    ) -> None:
        super().__init__()
        if momentum is not None and not 0.0 < momentum < 1.0:
            raise ValueError(f"standardize_momentum must be in (0, 1) or None, got {momentum}")
        bad = [d for d in shared_dims if not 0 <= d < len(sample_shape)]
        if bad:
            raise ValueError(f"shared_dims {tuple(bad)} are not dimensions of {sample_shape}")
        stat_shape = [1 if d in shared_dims else s for d, s in enumerate(sample_shape)]
        self.momentum = momentum
        self._batch_dims = (0, *(d + 1 for d in shared_dims))
        self._keepdim = bool(shared_dims)  # reduced dims stay as the statistics' 1s
        # Set on every rank of a distributed trainer (streamtrain/distributed/step_sync.py):
        # returns the samples, mean and variance of the union of all ranks' batches.
        self.moments_sync: MomentsReducer | None = None
        self.register_buffer("mean", torch.zeros(stat_shape))
        self.register_buffer("var", torch.zeros(stat_shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        # (key, scale) in one attribute: threads serving at once read a pair that belongs together
        self._kept_scale: tuple[tuple[object, ...], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        serving = not self.training and not torch.is_grad_enabled()
        scale = self._serving_scale() if serving else self.inverse_std(flat=0.0)
        out = (x - self.mean) * scale
        # a distributed rank folds in even an empty batch: the other ranks' moments still count
        if self.training and (x.shape[0] > 0 or self.moments_sync is not None):
            self.observe(x.detach())
        return out

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mean.shape)}, momentum={self.momentum}"

    def _serving_scale(self) -> torch.Tensor:
        """``inverse_std(0.0)``, kept while the statistics are unchanged. A served model's
        statistics change only with its weights, in place (which bumps the buffers' version
        counters) or as new tensors; recomputing it took ~6 small kernels of every served
        request, a tenth of the server's CPU per request (bench/README.md, Serve)."""
        # from the buffer dict: nn.Module.__getattr__ costs ~0.4 µs per name, per request
        mean, var = (
            cast(torch.Tensor, self._buffers["mean"]),
            cast(torch.Tensor, self._buffers["var"]),
        )
        if mean.is_inference() or var.is_inference():
            # tensors made under inference_mode keep no version counter: nothing to key on
            return self.inverse_std(flat=0.0)
        key = (mean.data_ptr(), mean._version, var.data_ptr(), var._version, var.device)
        kept = self._kept_scale
        if kept is not None and kept[0] == key:
            return kept[1]
        scale = self.inverse_std(flat=0.0)
        self._kept_scale = (key, scale)
        return scale

    def is_flat(self) -> torch.Tensor:
        """Per statistic: whether its variance so far is zero up to float rounding."""
        return self.var <= self.mean.square() * (REL_FLAT * REL_FLAT) + ABS_FLAT

    def inverse_std(self, flat: float) -> torch.Tensor:
        """``1 / sqrt(var)``, with ``flat`` where the variance is (near) zero."""
        return torch.where(self.is_flat(), flat, torch.rsqrt(self.var))

    def observe(self, x: torch.Tensor) -> None:
        """Fold the batch ``x`` (no grad) into the statistics."""
        # ~20 small kernels and no host synchronisation: this runs on every training step,
        # where at batch 1 a kernel launch costs as much as the arithmetic. x is detached and
        # the buffers need no grad, so no graph is recorded and in-place updates are safe.
        n = int(x.shape[0])
        if self.moments_sync is not None:
            n, batch_mean, batch_var = self.moments_sync(
                x.to(self.mean.dtype), self._batch_dims, self._keepdim
            )
            if n == 0:
                return
        else:
            batch_var, batch_mean = torch.var_mean(
                x.to(self.mean.dtype), dim=self._batch_dims, correction=0, keepdim=self._keepdim
            )
            if self._keepdim:
                batch_var, batch_mean = batch_var.squeeze(0), batch_mean.squeeze(0)
        # a NaN or inf anywhere in x makes its variance non-finite; such a batch is replaced
        # by the current statistics, which leaves them exactly as they were
        finite = batch_var.sum() < math.inf
        batch_mean = torch.where(finite, batch_mean, self.mean)
        batch_var = torch.where(finite, batch_var, self.var)
        self.count.add_(finite, alpha=n)
        # n / count; at count 0 (a first batch that was not finite) inf, clamped to 1: harmless.
        # In the statistics' precision, but at least float32 (a half count overflows at 65504)
        exact = torch.promote_types(self.mean.dtype, torch.float32)
        weight = torch.reciprocal(self.count.to(exact)).mul_(n).to(self.mean.dtype)
        weight = weight.clamp_(min=self._min_weight(n), max=1.0)
        delta = batch_mean - self.mean
        self.mean.lerp_(batch_mean, weight)
        # (1 - w) var + w var_b + w (1 - w) d^2  ==  lerp(var + w d^2, var_b, w)
        self.var.addcmul_(delta, delta * weight).lerp_(batch_var, weight)

    def _min_weight(self, n: int) -> float:
        return 0.0 if self.momentum is None else 1.0 - (1.0 - self.momentum) ** n


def make_standardizer(
    params: StandardizeParams, sample_shape: Sequence[int], shared_dims: Sequence[int] = ()
) -> OnlineStandardize | None:
    """The layer ``params`` ask for, or None when standardisation is off."""
    if not params.standardize:
        return None
    return OnlineStandardize(sample_shape, shared_dims, momentum=params.standardize_momentum)
