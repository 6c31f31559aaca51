"""What a model's modules imply for training, checked once before the first step: whether its
embedding tables' sparse gradients fit the optimizer, and whether train mode computes a different
function than eval mode (so the test half of test-then-train needs its own eval pass)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.optim import Optimizer

# optimizers whose step on a sparse gradient reads and writes only the rows it names
_ROW_WISE = (torch.optim.Adagrad, torch.optim.SGD, torch.optim.SparseAdam)


def check_sparse_gradients(
    model: nn.Module, optimizer: Optimizer, clip_grad_norm: float | None
) -> None:
    """Refuse, before the first step, settings that cannot take sparse (row-wise) gradients:
    Adam/AdamW/RMSprop raise on them, SGD momentum and weight decay would touch every row,
    and gradient clipping would make every row's update depend on the whole batch norm."""
    sparse = any(
        isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse for m in model.modules()
    )
    if not sparse:
        return
    fix = "set optimizer.name to adagrad (or sgd without momentum and weight decay)"
    if not isinstance(optimizer, _ROW_WISE):
        raise ValueError(
            f"this model's embedding tables learn sparsely (row-wise gradients), which "
            f"{type(optimizer).__name__} cannot take; {fix}"
        )
    for group in optimizer.param_groups:
        if group.get("weight_decay") or group.get("momentum"):
            raise ValueError(
                "weight_decay and momentum would move every embedding row on every step; "
                f"set them to 0 for a model with embedding tables ({fix})"
            )
    if clip_grad_norm is not None:
        raise ValueError(
            "optimizer.clip_grad_norm does not apply to sparse embedding gradients; unset it "
            "(Adagrad already scales each row's step by its own history)"
        )


def train_mode_differs(model: nn.Module) -> bool:
    """Whether train mode computes a different function than eval mode (dropout, batch norm)."""
    for module in model.modules():
        if isinstance(module, _DropoutNd) and module.p > 0:
            return True
        if isinstance(module, _BatchNorm):
            return True
        if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)) and module.dropout > 0:
            return True
    return False
