"""``auto``'s step loss under the Hedge mix: both heads' loss gradients in closed form.

Under the Hedge mix each head learns from its own task loss, never through the mix. Each
head's loss gradient with respect to its output is known in closed form — ``(sigmoid(z) - y)``
for logistic, ``(softmax(z) - onehot(y))`` for softmax, ``2 (z - y) / width`` for squared and
the clamped residual for Huber loss, each times the sample's normalised weight — and both are
computed in one pass over the stacked heads. The linear head's output has no graph
(models/auto.py): the learner writes ``dL/dW = grad_out^T x`` and ``dL/db = sum(grad_out)``
itself (:mod:`.objective`). The MLP head's gradient is handed to backward, which starts from
that head's output (``torch.autograd.backward(output, gradient)``): no loss, weighting or sum
node is recorded or run backward, where the ``mlp`` records and runs about a dozen. That and
the linear head's closed form are most of why ``auto`` costs little more than the ``mlp`` per
step (bench/README.md, Peers); tests/unit/test_wide_head.py checks both gradients against
autograd's.

The mix's sigmoid or log-softmax of the stacked heads (hedge.py) is reused: the heads'
probabilities, and the heads' wrong predictions the mix is weighed by. No loss of the MLP head
is computed: the guard sees a non-finite head through the mixed prediction's reported loss and
the gradients' norm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from streamtrain.train.models.hedge import Criterion, HeadsSeen
from streamtrain.train.task import TaskHead


class WideLoss(NamedTuple):
    """``train`` the MLP head's output, what backward starts from, and ``train_grad`` its loss
    gradient; ``reported`` the mixed prediction's loss; ``head_sums`` each head's
    sample-weighted sum of the mix's criterion; ``grad_out`` ``[n, width]`` the linear head's
    loss gradient with respect to its output."""

    train: torch.Tensor
    train_grad: torch.Tensor
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
    w = _as_float(weights)
    total = w.sum().clamp_min(1e-12)
    if stacked.dim() == 2:  # binary: [n, heads]; labels and weights as columns [n, 1] once
        w_col = w[:, None]
        column = w_col / total  # normalised once, for the gradients and the reported loss
        y = labels.to(torch.float32)[:, None]
        sig = stacked.sigmoid() if activated is None else activated
        # both heads' (sigmoid - y) * w in one pass; each head's column is its gradient
        grads = (sig - y) * column
        reported = F.binary_cross_entropy_with_logits(
            mixed.float(), y.view(-1), weight=column.view(-1), reduction="sum"
        )
        if criterion == "error":  # a bool compared with float labels: one kernel
            per_head = (stacked > 0) != y
        else:
            per_head = F.binary_cross_entropy_with_logits(
                stacked, y.expand_as(stacked), reduction="none"
            )
        # the heads' weighted sums: a bool (errors) times the float weights promotes in the kernel
        head_sums = (per_head * w_col).sum(dim=0)
        linear, deep = grads.split_with_sizes([1, 1], dim=1)
    else:  # multiclass: [n, classes, heads]; labels and weights as [n, 1, 1] once
        log_p = stacked.log_softmax(dim=1) if activated is None else activated
        label3 = labels.view(-1, 1, 1)
        w3 = w.view(-1, 1, 1)
        normalised3 = w3 / total
        onehot = label3 == _class_index(stacked.shape[1], stacked.device)  # [n, classes, 1]
        # both heads' softmax * w - onehot * w (as log_softmax's backward forms it) in one
        # pass, then one [n, classes] view each; addcmul takes the bool one-hot as it is
        grads = torch.addcmul(log_p.exp() * normalised3, onehot, normalised3, value=-1.0)
        nll = F.nll_loss(mixed.float(), labels, reduction="none")
        reported = torch.dot(nll, normalised3.view(-1))
        if criterion == "error":
            per_head = stacked.argmax(dim=1, keepdim=True) != label3  # [n, 1, heads]
        else:
            per_head = log_p.gather(1, label3.expand(-1, 1, stacked.shape[2])).neg()
        head_sums = (per_head * w3).sum(dim=(0, 1))
        linear, deep = grads.unbind(-1)
    head = seen.heads[1]
    deep = deep if deep.dtype == head.dtype else deep.to(head.dtype)
    return WideLoss(head, deep, reported, head_sums, linear)


def regression_loss(
    seen: HeadsSeen,
    mixed: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    head: TaskHead,
) -> WideLoss:
    """Regression (``seen.stacked`` ``[n, width, 2]``, the linear head first) against the
    standardised ``targets``, under ``mse`` (the mean over outputs of squared errors) or
    ``huber`` (delta 1); the mix always weighs the heads by their task loss."""
    stacked = seen.stacked.float()
    width = stacked.shape[1]
    targets = _as_float(targets).reshape(stacked.shape[:2])
    w = _as_float(weights)
    normalised = w / w.sum().clamp_min(1e-12)
    reported = torch.dot(head.per_sample_loss(mixed, targets), normalised)
    residual = stacked - targets[:, :, None]  # both heads at once: [n, width, heads]
    if head.loss_name == "mse":
        per_head = residual.square().mean(dim=1)
        grads = residual * (normalised * (2.0 / width)).view(-1, 1, 1)
    elif head.loss_name == "huber":
        per_head = F.huber_loss(stacked, targets[:, :, None].expand_as(stacked), reduction="none")
        per_head = per_head.mean(dim=1)
        grads = residual.clamp(-1.0, 1.0) * (normalised * (1.0 / width)).view(-1, 1, 1)
    else:
        raise ValueError(f"no closed-form gradient for loss {head.loss_name!r}; use mse or huber")
    linear, deep = grads.unbind(-1)
    out = seen.heads[1]
    deep = deep if deep.dtype == out.dtype else deep.to(out.dtype)
    return WideLoss(out, deep, reported, torch.mv(per_head.t(), w), linear)


def linear_grads(grad_out: torch.Tensor, features: torch.Tensor) -> list[torch.Tensor]:
    """``[dL/dW, dL/db]`` of a linear layer ``z = x W^T + b`` from ``dL/dz`` (``grad_out``)."""
    x = features if features.dtype == grad_out.dtype else features.to(grad_out.dtype)
    return [torch.mm(grad_out.t(), x), grad_out.sum(dim=0)]


def _as_float(values: torch.Tensor) -> torch.Tensor:
    """``values`` as float32: itself when it is (a dtype check costs a tenth of ``.to``'s call)."""
    return values if values.dtype == torch.float32 else values.float()


# (classes, device) -> arange(classes) as a column [classes, 1]: a constant, so a one-hot
# [n, classes, 1] is one comparison with the labels [n, 1, 1]
_CLASS_INDEX: dict[tuple[int, torch.device], torch.Tensor] = {}


def _class_index(classes: int, device: torch.device) -> torch.Tensor:
    key = (classes, device)
    index = _CLASS_INDEX.get(key)
    if index is None:
        index = _CLASS_INDEX[key] = torch.arange(classes, device=device)[:, None]
    return index
