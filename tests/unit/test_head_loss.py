"""``HeadsLoss`` gives the loss and the gradient autograd gives for the same loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamtrain.train.head_loss import heads_loss


def _autograd_reference(
    heads: tuple[torch.Tensor, ...], labels: torch.Tensor, w: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The heads' loss through autograd: each head's task loss, weighted by ``w / sum(w)``."""
    leaves = [head.detach().clone().requires_grad_(True) for head in heads]
    multiclass = heads[0].shape[1] > 1
    stacked = torch.stack(leaves, dim=-1)  # [n, width, H]
    if multiclass:
        per = F.cross_entropy(stacked, labels[:, None].expand(-1, len(heads)), reduction="none")
    else:
        target = labels.float()[:, None].expand(-1, len(heads))
        per = F.binary_cross_entropy_with_logits(stacked[:, 0], target, reduction="none")
    normalised = w / w.sum().clamp_min(1e-12)
    sums = (per * normalised[:, None]).sum(dim=0)
    train = sums.sum()
    (train * scale).backward()
    grads = [leaf.grad for leaf in leaves]
    assert all(grad is not None for grad in grads)
    return train.detach(), sums.detach(), grads  # type: ignore[return-value]


def _heads_loss(
    heads: tuple[torch.Tensor, ...], labels: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """As objective.py calls it."""
    normalised = w / w.sum().clamp_min(1e-12)
    count = len(heads)
    if heads[0].shape[1] > 1:
        stacked = torch.stack([h.detach() for h in heads], dim=-1)
        classes = torch.arange(stacked.shape[1])[None, :, None].expand(1, -1, count)
        target = (labels.view(-1, 1, 1) == classes) * normalised.view(-1, 1, 1).neg()
        return heads_loss(stacked, stacked.log_softmax(dim=1), target, None, heads)
    stacked = torch.cat([h.detach() for h in heads], dim=1)
    target = labels.float()[:, None].expand(-1, count)
    return heads_loss(stacked, None, target, normalised[:, None], heads)


@pytest.mark.parametrize("classes", [1, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize("n", [1, 16])
@pytest.mark.parametrize("scale", [1.0, 1024.0])  # 1024: a loss scaler's factor
def test_heads_loss_matches_autograd(classes: int, n: int, scale: float) -> None:
    g = torch.Generator().manual_seed(n)
    heads = tuple(torch.randn(n, classes, generator=g) * 4 for _ in range(2))
    labels = torch.randint(0, max(classes, 2), (n,), generator=g)
    w = torch.rand(n, generator=g) + 0.25
    want_train, want_sums, want_grads = _autograd_reference(heads, labels, w, scale)

    leaves = tuple(head.clone().requires_grad_(True) for head in heads)
    train, sums = _heads_loss(leaves, labels, w)
    (train * scale).backward()

    # the loss sums may add in another order (zeros in between): to float32 rounding
    torch.testing.assert_close(train.detach(), want_train, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(sums, want_sums, rtol=1e-6, atol=0.0)
    assert not sums.requires_grad
    for leaf, want in zip(leaves, want_grads, strict=True):
        assert leaf.grad is not None
        assert leaf.grad.shape == leaf.shape
        assert torch.equal(leaf.grad, want)  # the gradient bit for bit
        assert leaf.grad.abs().sum() > 0  # a gradient that could have been wrong
