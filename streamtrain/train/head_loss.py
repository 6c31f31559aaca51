"""``auto``'s heads' training loss and its gradient in one autograd function, when the linear
head shares the MLP's first matmul (``linear_lr: null``); by default the linear head learns in
closed form instead (:mod:`.wide_head`).

Autograd would record the per-head loss, its sample weighting, the sums and the stack of the
heads as a node each, and run as many backward steps (about a dozen small operations in a
batch-1 step, where each costs mostly its call). :func:`heads_loss` computes the same loss
from the stacked heads the mixer already built (without a graph, hedge.py), reusing the
sigmoid or log-softmax the mix computed, and keeps the loss's gradient with respect to the
heads less the incoming gradient's factor; :class:`HeadsLoss` joins the heads to the loss in
the graph, so backward is two multiplications and a split into the heads. The arithmetic
is autograd's for the same loss (BCE's gradient is ``(sigmoid(z) - y) * grad``; cross
entropy's is ``log_softmax``'s backward of ``-grad`` at the label;
tests/unit/test_head_loss.py checks it bit for bit). Regression keeps autograd
(:mod:`.objective`).

The loss is ``sum_i wn_i * loss_i`` with the sample weights normalised once (``wn = w /
sum(w)``): the mean, its gradient and the mixed prediction's reported loss then need no
division each.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class HeadsLoss(torch.autograd.Function):
    """``apply(sums, saved, *heads)`` -> ``train = sums.sum()``, whose backward hands each of
    ``heads`` its gradient. ``sums`` (no graph) and ``saved`` (the tensors the gradient needs)
    are computed by :func:`heads_loss` outside the function: its inputs have no graph, so
    nothing there needs recording, and the function itself stays one output, no saved-tensor
    bookkeeping (its Python was ~a fifth of ``auto``'s extra cost over ``mlp`` in a batch-1
    step, bench/README.md, Peers). ``saved`` is a tuple, not tensors, so autograd does not
    treat it as an input: ``(log_p, target)`` (multiclass) or ``(sigmoid - target, column)``
    (binary), neither modified in place before backward.
    """

    @staticmethod
    def forward(
        ctx: Any,
        sums: torch.Tensor,
        saved: tuple[torch.Tensor, torch.Tensor],
        multiclass: bool,
        *heads: torch.Tensor,
    ) -> torch.Tensor:
        ctx.saved = saved
        ctx.multiclass = multiclass
        ctx.heads = len(heads)
        return sums.sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        # d train / d per = grad * w, as autograd's sum and mul backward give
        if ctx.multiclass:
            log_p, target = ctx.saved
            out = torch._log_softmax_backward_data(target * grad, log_p, 1, log_p.dtype)
            per_head = out.unbind(-1)  # [n, classes] each
        else:
            diff, column = ctx.saved
            # split_with_sizes: Tensor.split's Python wrapper cost more than the split
            per_head = (diff * (grad * column)).split_with_sizes([1] * ctx.heads, 1)
        return (None, None, None, *per_head)


def heads_loss(
    stacked: torch.Tensor,
    activated: torch.Tensor | None,
    target: torch.Tensor,
    column: torch.Tensor | None,
    heads: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, sums)`` for the H ``heads`` (see the module's docstring).

    ``stacked`` the heads' float32 logits without a graph, ``[n, classes, H]`` (multiclass) or
    ``[n, H]`` (binary); ``activated`` its log-softmax over classes or its sigmoid (None:
    computed here); ``heads`` the H head outputs ``stacked`` was built from, which receive the
    gradient. Multiclass: ``target`` ``[n, classes, 1]`` is minus each sample's normalised
    weight at its label and 0 elsewhere, ``column`` None. Binary: ``target`` the float labels
    per head ``[n, H]``, ``column`` ``[n, 1]`` the normalised sample weights.
    ``sums[k]`` is head ``k``'s normalised-weight loss sum (not differentiable);
    ``train = sums.sum()`` is what backward runs on.
    """
    saved: tuple[torch.Tensor, torch.Tensor]
    if column is None:
        log_p = stacked.log_softmax(dim=1) if activated is None else activated
        # -w log p[label] summed: target is -w at the label, 0 elsewhere (log_p is finite)
        sums = (log_p * target).sum(dim=(0, 1))
        saved = (log_p, target)  # nll_loss's gradient, -w at the label, is target itself
    else:
        sig = stacked.sigmoid() if activated is None else activated
        per = F.binary_cross_entropy_with_logits(stacked, target, reduction="none")
        sums = (per * column).sum(dim=0)
        saved = (sig - target, column)
    train: torch.Tensor = HeadsLoss.apply(sums, saved, column is None, *heads)  # type: ignore[no-untyped-call]
    return train, sums
