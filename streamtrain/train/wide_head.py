"""``auto``'s step loss when its linear head learns in closed form.

Under the Hedge mix each head learns from its own task loss, never through the mix. The MLP
head's loss goes through autograd as any model's does; the linear head's gradient with respect
to its output is known in closed form — ``(sigmoid(z) - y)`` for logistic, ``(softmax(z) -
onehot(y))`` for softmax, ``2 (z - y) / width`` for squared and the clamped residual for Huber
loss, each times the sample's normalised weight — so its output is computed without a graph
(models/auto.py) and the learner writes ``dL/dW = grad_out^T x`` and ``dL/db = sum(grad_out)``
itself (:mod:`.objective`). That spares the linear layer's backward and the autograd function
that handed both heads their gradients (a fifth of ``auto``'s extra CPU time over ``mlp`` in a
batch-1 step, bench/README.md, Peers); tests/unit/test_wide_head.py checks the gradients
against autograd's.

The mix's sigmoid or log-softmax of the stacked heads (hedge.py) is reused: the linear head's
probabilities, and the heads' wrong predictions the mix is weighed by.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from streamtrain.train.models.hedge import Criterion, HeadsSeen
from streamtrain.train.task import TaskHead


class WideLoss(NamedTuple):
    """``train`` what backward runs on (the MLP head's loss); ``reported`` the mixed
    prediction's loss; ``head_sums`` each head's sample-weighted sum of the mix's criterion;
    ``grad_out`` ``[n, width]`` the linear head's loss gradient with respect to its output."""

    train: torch.Tensor
    reported: torch.Tensor
    head_sums: torch.Tensor
    grad_out: torch.Tensor


def classification_loss(
    seen: HeadsSeen,
    mixed: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    criterion: Criterion,
) -> WideLoss:
    """Binary (``seen.stacked`` ``[n, 2]``) or multiclass (``[n, classes, 2]``); the linear head
    first, the MLP head (with its graph) second. Losses are sample-weighted means."""
    stacked = seen.stacked
    # the mix's sigmoid / log-softmax, unless autocast made the heads another dtype
    activated = seen.activated if stacked.dtype == torch.float32 else None
    stacked = stacked.float()
    deep = seen.heads[1].float()
    w = weights.to(torch.float32)[:, None]  # a column [n, 1]: it weighs the heads' columns
    column = w / w.sum().clamp_min(1e-12)  # normalised once, for every loss and the gradient
    normalised = column.view(-1)
    if stacked.dim() == 2:  # binary: [n, heads]; labels as a column [n, 1] once
        y = labels.to(torch.float32)[:, None]
        sig = stacked.sigmoid() if activated is None else activated
        train = F.binary_cross_entropy_with_logits(deep, y, weight=column, reduction="sum")
        grad_out = (sig[:, :1] - y) * column
        reported = F.binary_cross_entropy_with_logits(
            mixed.float(), y.view(-1), weight=normalised, reduction="sum"
        )
        if criterion == "error":  # a bool compared with float labels: one kernel
            per_head = (stacked > 0) != y
        else:
            per_head = F.binary_cross_entropy_with_logits(
                stacked, y.expand_as(stacked), reduction="none"
            )
    else:  # multiclass: [n, classes, heads]
        log_p = stacked.log_softmax(dim=1) if activated is None else activated
        train = torch.dot(F.cross_entropy(deep, labels, reduction="none"), normalised)
        label_column = labels[:, None]
        onehot = label_column == _class_index(stacked.shape[1], stacked.device)
        grad_out = (log_p[:, :, 0].exp() - onehot.float()) * column
        reported = torch.dot(F.nll_loss(mixed.float(), labels, reduction="none"), normalised)
        if criterion == "error":
            per_head = stacked.argmax(dim=1) != label_column  # [n, heads]
        else:
            at_label = labels.view(-1, 1, 1).expand(-1, 1, stacked.shape[2])
            per_head = log_p.gather(1, at_label).squeeze(1).neg()
    # the heads' weighted sums: a bool (errors) times the float weights promotes in the kernel
    head_sums = (per_head * w).sum(dim=0)
    return WideLoss(train, reported, head_sums, grad_out)


def regression_loss(
    seen: HeadsSeen,
    mixed: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    head: TaskHead,
) -> WideLoss:
    """Regression (``seen.heads`` ``[n, width]`` each, the linear head first) against the
    standardised ``targets``, under ``mse`` (the mean over outputs of squared errors) or
    ``huber`` (delta 1); the mix always weighs the heads by their task loss."""
    linear, deep = seen.heads[0].float(), seen.heads[1].float()
    targets = targets.to(torch.float32).reshape(deep.shape)
    w = weights.to(torch.float32)
    normalised = w / w.sum().clamp_min(1e-12)
    per_deep = head.per_sample_loss(deep, targets)
    train = torch.dot(per_deep, normalised)
    reported = torch.dot(head.per_sample_loss(mixed, targets), normalised)
    residual = linear - targets
    width = deep.shape[1]
    if head.loss_name == "mse":
        per_linear = residual.square().mean(dim=1)
        grad_out = residual * (normalised * (2.0 / width))[:, None]
    elif head.loss_name == "huber":
        per_linear = head.per_sample_loss(linear, targets)
        grad_out = residual.clamp(-1.0, 1.0) * (normalised * (1.0 / width))[:, None]
    else:
        raise ValueError(f"no closed-form gradient for loss {head.loss_name!r}; use mse or huber")
    per_head = torch.stack([per_linear, per_deep.detach()], dim=1)
    return WideLoss(train, reported, torch.mv(per_head.t(), w), grad_out)


def linear_grads(grad_out: torch.Tensor, features: torch.Tensor) -> list[torch.Tensor]:
    """``[dL/dW, dL/db]`` of a linear layer ``z = x W^T + b`` from ``dL/dz`` (``grad_out``)."""
    x = features if features.dtype == grad_out.dtype else features.to(grad_out.dtype)
    return [torch.mm(grad_out.t(), x), grad_out.sum(dim=0)]


# (classes, device) -> arange(classes): a constant, so a one-hot is one comparison
_CLASS_INDEX: dict[tuple[int, torch.device], torch.Tensor] = {}


def _class_index(classes: int, device: torch.device) -> torch.Tensor:
    key = (classes, device)
    index = _CLASS_INDEX.get(key)
    if index is None:
        index = _CLASS_INDEX[key] = torch.arange(classes, device=device)
    return index
