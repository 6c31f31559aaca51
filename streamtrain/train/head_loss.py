"""``auto``'s heads' training loss and its gradient in one autograd function.

Autograd would record the per-head loss, its sample weighting and the two sums as five nodes,
and run as many backward steps (about a dozen small operations in a batch-1 step, where each
costs mostly its call). :class:`HeadsLoss` computes the same loss in one forward and keeps the
loss's gradient with respect to the heads, less the incoming gradient's factor, so backward is
two multiplications. The arithmetic is the one autograd runs, operation for operation (BCE's
gradient is ``(sigmoid(z) - y) * grad``; cross entropy's is ``log_softmax``'s backward of
``-grad`` at the label), so every parameter comes out bit for bit as before
(tests/unit/test_head_loss.py). Regression keeps autograd (:mod:`.objective`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class HeadsLoss(torch.autograd.Function):
    """``apply(heads, labels_k, column, total, multiclass)`` -> ``(train, sums)``.

    ``heads`` float32 logits, ``[n, classes, H]`` (multiclass) or ``[n, H]`` (binary);
    ``labels_k`` ``[n, H]`` the labels per head (binary: floats); ``column`` ``[n, 1]`` the
    sample weights and ``total`` their clamped sum. ``sums[k]`` is head ``k``'s sample-weighted
    loss sum (not differentiable); ``train = sums.sum() / total`` is what backward runs on.
    """

    @staticmethod
    def forward(
        ctx: Any,
        heads: torch.Tensor,
        labels_k: torch.Tensor,
        column: torch.Tensor,
        total: torch.Tensor,
        multiclass: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if multiclass:
            log_p = heads.log_softmax(dim=1)
            index = labels_k.unsqueeze(1)
            per = log_p.gather(1, index).neg_().squeeze(1)  # nll_loss's -log p[label]
            # where backward puts -grad (nll_loss's gradient), as ones
            hot = torch.zeros_like(log_p).scatter_(1, index, 1.0)
            ctx.save_for_backward(log_p, hot, column, total)
        else:
            per = F.binary_cross_entropy_with_logits(heads, labels_k, reduction="none")
            ctx.save_for_backward(heads.sigmoid() - labels_k, column, total)
        ctx.multiclass = multiclass
        ctx.set_materialize_grads(False)  # no zeros for ``sums``, which has no gradient
        sums = (per * column).sum(dim=0)
        ctx.mark_non_differentiable(sums)
        return sums.sum() / total, sums

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _sums: torch.Tensor) -> tuple[Any, ...]:
        # d train / d per = grad / total * column, as autograd's div, sum and mul backward give
        if ctx.multiclass:
            log_p, hot, column, total = ctx.saved_tensors
            scaled = (grad / total * column).neg_().unsqueeze(1)
            grad_log_p = hot * scaled
            out = torch._log_softmax_backward_data(grad_log_p, log_p, 1, log_p.dtype)
        else:
            diff, column, total = ctx.saved_tensors
            out = diff * (grad / total * column)
        return out, None, None, None, None


def heads_loss(
    heads: torch.Tensor,
    labels_k: torch.Tensor,
    column: torch.Tensor,
    total: torch.Tensor,
    multiclass: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`HeadsLoss` applied (``Function.apply`` is untyped in torch)."""
    train, sums = HeadsLoss.apply(heads, labels_k, column, total, multiclass)  # type: ignore[no-untyped-call]
    return train, sums
