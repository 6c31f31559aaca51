"""The union-batch gradient of row-sparse parameters: every rank's rows, all-gathered.

A sparse (COO) gradient names only the rows a batch touched, so it cannot join the dense
all-reduce buffer without spending the whole table on every step. Instead each rank gathers
every rank's ``(rows, W_r * values)`` and sums them into the same coalesced gradient. The
volume each rank receives is ``world_size * touched rows * (dim + 1)`` numbers a step
(docs/scaling.md measures where that stops scaling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn


def sparse_embedding_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights whose gradients are sparse: ``nn.Embedding``/``EmbeddingBag(sparse=True)``."""
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse and m.weight.requires_grad
    ]


def _local_rows(p: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's coalesced ``(rows, values)``; none when this rank's batch touched none."""
    grad = p.grad
    if grad is None:
        return p.new_empty((0,), dtype=torch.int64), p.new_empty((0, *p.shape[1:]))
    grad = grad.coalesce()  # sparse=True tables always produce sparse gradients
    return grad.indices()[0], grad.values()


def gather_sparse_grads(
    params: Sequence[nn.Parameter], scale: torch.Tensor, union_scale: torch.Tensor
) -> None:
    """Replace every ``p.grad`` by ``sum_r scale_r * grad_r / union_scale``, coalesced.

    1. Coalesce this rank's gradient of each parameter; multiply its values by ``scale``.
    2. All-gather how many rows each rank holds per parameter (one small collective).
    3. All-gather the rows and the values of all parameters in two flat buffers, padded to
       the largest rank's size (all_gather needs equal shapes; gloo and NCCL both have it).
    4. Every rank concatenates the pieces in rank order and coalesces: the same input in the
       same order, so every rank ends with the same gradient, bit for bit; then divides.
    """
    if not params:
        return
    world = dist.get_world_size()
    local = [_local_rows(p) for p in params]
    device = params[0].device
    counts = torch.tensor([len(rows) for rows, _ in local], dtype=torch.int64, device=device)
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts)
    widths = torch.tensor([math.prod(p.shape[1:]) for p in params], dtype=torch.int64)
    per_rank = torch.stack(all_counts).cpu()  # [world, params]
    row_slots = max(int(per_rank.sum(1).max()), 1)
    value_slots = max(int((per_rank * widths).sum(1).max()), 1)
    rows = torch.zeros(row_slots, dtype=torch.int64, device=device)
    values = torch.zeros(value_slots, dtype=torch.float32, device=device)
    flat_rows = torch.cat([r for r, _ in local])
    flat_values = torch.cat([(v.float() * scale).reshape(-1) for _, v in local])
    rows[: flat_rows.numel()] = flat_rows
    values[: flat_values.numel()] = flat_values
    gathered_rows = [torch.empty_like(rows) for _ in range(world)]
    gathered_values = [torch.empty_like(values) for _ in range(world)]
    dist.all_gather(gathered_rows, rows)
    dist.all_gather(gathered_values, values)
    pieces: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [([], []) for _ in params]
    for rank in range(world):
        row_at = value_at = 0
        for i, p in enumerate(params):
            n, width = int(per_rank[rank, i]), int(widths[i])
            pieces[i][0].append(gathered_rows[rank][row_at : row_at + n])
            pieces[i][1].append(
                gathered_values[rank][value_at : value_at + n * width].view(n, *p.shape[1:])
            )
            row_at, value_at = row_at + n, value_at + n * width
    for p, (row_parts, value_parts) in zip(params, pieces, strict=True):
        union = torch.sparse_coo_tensor(
            torch.cat(row_parts).unsqueeze(0),
            torch.cat(value_parts),
            p.shape,
            check_invariants=False,  # rows came from coalesced gradients of this shape
        )
        p.grad = divided_gradient(union.coalesce(), union_scale, p)


def divided_gradient(
    summed: torch.Tensor, union_scale: torch.Tensor, p: torch.Tensor
) -> torch.Tensor:
    """A coalesced sparse sum of ``W_r``-weighted rows, divided by ``W``: ``p``'s gradient."""
    return torch.sparse_coo_tensor(
        summed.indices(),
        (summed.values() / union_scale).to(p.dtype),
        p.shape,
        is_coalesced=True,
        check_invariants=False,
    )


def gather_ids(parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each int64 tensor of ``parts`` concatenated over every rank, in rank order: the union
    batch's IDs per dynamic table, identical on every rank (two collectives a step)."""
    if not parts:
        return []
    world = dist.get_world_size()
    device = parts[0].device
    counts = torch.tensor([p.numel() for p in parts], dtype=torch.int64, device=device)
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts)
    per_rank = torch.stack(all_counts).cpu()  # [world, parts]
    slots = max(int(per_rank.sum(1).max()), 1)
    flat = torch.zeros(slots, dtype=torch.int64, device=device)
    mine = torch.cat([p.reshape(-1).to(torch.int64) for p in parts])
    flat[: mine.numel()] = mine
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    pieces: list[list[torch.Tensor]] = [[] for _ in parts]
    for rank in range(world):
        at = 0
        for i in range(len(parts)):
            n = int(per_rank[rank, i])
            pieces[i].append(gathered[rank][at : at + n])
            at += n
    return [torch.cat(p) for p in pieces]
