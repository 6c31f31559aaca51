"""``HeadsLoss`` gives the loss and the gradient autograd gives, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamtrain.train.head_loss import heads_loss


def _autograd_reference(
    heads: torch.Tensor, labels_k: torch.Tensor, w: torch.Tensor, multiclass: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step's head loss as objective.py built it before HeadsLoss, through autograd."""
    heads = heads.detach().requires_grad_(True)
    if multiclass:
        per = F.cross_entropy(heads, labels_k, reduction="none")
    else:
        per = F.binary_cross_entropy_with_logits(heads, labels_k, reduction="none")
    column = w[:, None]
    sums = (per * column).sum(dim=0)
    train = sums.sum() / w.sum().clamp_min(1e-12)
    (train * scale).backward()
    assert heads.grad is not None
    return train.detach(), sums.detach(), heads.grad


@pytest.mark.parametrize("multiclass", [False, True])
@pytest.mark.parametrize("n", [1, 16])
@pytest.mark.parametrize("scale", [1.0, 1024.0])  # 1024: a loss scaler's factor
def test_heads_loss_matches_autograd_bit_for_bit(multiclass: bool, n: int, scale: float) -> None:
    g = torch.Generator().manual_seed(n)
    heads = torch.randn(n, 3, 2, generator=g) * 4 if multiclass else torch.randn(n, 2, generator=g)
    if multiclass:
        labels_k = torch.randint(0, 3, (n, 1), generator=g).expand(-1, 2)
    else:
        labels_k = torch.randint(0, 2, (n, 1), generator=g).float().expand(-1, 2)
    w = torch.rand(n, generator=g) + 0.25
    want_train, want_sums, want_grad = _autograd_reference(heads, labels_k, w, multiclass, scale)

    leaf = heads.clone().requires_grad_(True)
    train, sums = heads_loss(leaf, labels_k, w[:, None], w.sum().clamp_min(1e-12), multiclass)
    (train * scale).backward()

    assert torch.equal(train.detach(), want_train)
    assert torch.equal(sums, want_sums)
    assert not sums.requires_grad
    assert leaf.grad is not None
    assert torch.equal(leaf.grad, want_grad)
    assert leaf.grad.abs().sum() > 0  # a gradient that could have been wrong
