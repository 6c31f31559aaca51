"""The task head: loss, predictions and the prequential score for the model's outputs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from streamtrain.sample.spec import SampleSpec

LossName = Literal["auto", "cross_entropy", "bce", "mse", "huber"]

_FITTING: dict[str, tuple[str, ...]] = {
    "multiclass": ("cross_entropy",),
    "binary": ("bce",),
    "regression": ("mse", "huber"),
}
# a batch whose weights sum to zero contributes a zero loss instead of 0/0
_MIN_TOTAL_WEIGHT = 1e-12


class TaskHead:
    """Turns model outputs into a loss, predictions and per-sample scores for one task.

    Outputs follow the model convention: multiclass logits ``[n, C]``, binary logits ``[n]``,
    regression ``[n, target_dim]``. Labels are int64 ``[n]`` classes or float32
    ``[n, target_dim]`` targets. Everything stays on the device: nothing here synchronizes.

    >>> head = TaskHead(SampleSpec(feature_shape=(4,), task="binary"))
    >>> head.loss_name
    'bce'
    >>> logits = torch.tensor([2.0, -2.0])
    >>> head.predict(logits)["predicted_class"].tolist()
    [1, 0]
    >>> head.score(logits, torch.tensor([1, 1])).tolist()
    [1.0, 0.0]
    """

    def __init__(self, spec: SampleSpec, loss: LossName = "auto") -> None:
        fitting = _FITTING[spec.task]
        if loss == "auto":
            loss = fitting[0]  # type: ignore[assignment]
        elif loss not in fitting:
            raise ValueError(
                f"loss {loss!r} does not fit a {spec.task} task; use 'auto' or "
                f"{' / '.join(repr(name) for name in fitting)}"
            )
        self.spec = spec
        self.loss_name: str = loss

    def per_sample_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Unreduced loss ``[n]``, computed in float32 even under autocast."""
        outputs = outputs.float()
        if self.loss_name == "cross_entropy":
            return F.cross_entropy(outputs, labels, reduction="none")
        if self.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(
                outputs, labels.to(outputs.dtype), reduction="none"
            )
        targets = labels.to(outputs.dtype).reshape(outputs.shape)
        if self.loss_name == "mse":
            return F.mse_loss(outputs, targets, reduction="none").mean(dim=1)
        return F.huber_loss(outputs, targets, reduction="none").mean(dim=1)

    def loss(
        self, outputs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Sample-weighted mean loss ``sum(w * l) / sum(w)`` as a 0-dim tensor."""
        per_sample = self.per_sample_loss(outputs, labels)
        weights = weights.to(per_sample.dtype)
        total = weights.sum().clamp_min(_MIN_TOTAL_WEIGHT)
        return (weights * per_sample).sum() / total

    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classification: ``probabilities`` ``[n, C]`` and ``predicted_class`` ``[n]`` int64
        (binary: ``[n, 2]`` columns for class 0 and 1). Regression: ``value`` ``[n, target_dim]``.
        """
        outputs = outputs.float()
        if self.spec.task == "multiclass":
            return {
                "probabilities": outputs.softmax(dim=1),
                "predicted_class": outputs.argmax(dim=1),
            }
        if self.spec.task == "binary":
            positive = outputs.sigmoid()
            return {
                "probabilities": torch.stack([1.0 - positive, positive], dim=1),
                "predicted_class": (outputs > 0).long(),
            }
        return {"value": outputs}

    def score(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample prequential score ``[n]``: 1.0/0.0 correctness, or mean absolute error."""
        outputs = outputs.detach().float()
        if self.spec.task == "multiclass":
            return (outputs.argmax(dim=1) == labels).float()
        if self.spec.task == "binary":
            return ((outputs > 0).long() == labels).float()
        return (outputs - labels.to(outputs.dtype).reshape(outputs.shape)).abs().mean(dim=1)
