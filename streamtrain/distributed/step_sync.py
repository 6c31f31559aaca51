"""One learning step shared by every rank: gradients, standardisation moments and the head
mixture's losses all-reduced.

A rank's loss is its batch's weighted mean ``sum(w l) / W_r`` (``W_r = sum(w)``), so its
gradient is ``g_r = sum(w grad l) / W_r``. The gradient of the union of all ranks' batches is
``sum_r W_r g_r / W`` with ``W = sum_r W_r``: each rank all-reduces ``W_r g_r`` and ``W_r`` in
one buffer and divides. A rank with an empty batch contributes ``W_r = 0``, so the step equals
a single-process step on the union batch (up to float summation order).

Row-sparse embedding weights (``sparse=True`` tables) stay out of that buffer: their gradients
name only the touched rows, and every rank all-gathers the others' rows instead
(:mod:`streamtrain.distributed.sparse_sync`). The shards of ``row_wise`` tables take neither
path: each rank sends its lookups' gradients to their owners by all-to-all
(:mod:`streamtrain.distributed.row_exchange`), and only the squared norm of every shard's
gradient joins the buffer, so a non-finite row on any rank rejects the step on every rank.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from streamtrain import metrics
from streamtrain.distributed.row_exchange import RowExchange
from streamtrain.distributed.sparse_sync import (
    divided_gradient,
    gather_ids,
    gather_sparse_grads,
)
from streamtrain.train.models.hedge import find_mixer
from streamtrain.train.models.standardize import OnlineStandardize


class GradientSync:
    """Called by :class:`~streamtrain.train.learner.Learner` between backward and the guard.

    ``sparse``: the parameters whose gradients are sparse (``sparse_embedding_weights``);
    ``exchange`` and ``sharded``: the row exchange and the weights of this rank's row-wise
    shards (``attach_row_exchange``), which leave the all-gather for the all-to-all.
    """

    def __init__(
        self,
        sparse: Iterable[torch.Tensor] = (),
        exchange: RowExchange | None = None,
        sharded: Iterable[nn.Parameter] = (),
    ) -> None:
        self._sharded = list(sharded)
        self._exchange = exchange
        if self._sharded and exchange is None:
            raise ValueError("row-wise shards need the row exchange that reads them")
        self._sparse = {id(p) for p in sparse} | {id(p) for p in self._sharded}
        if self._sharded:  # only a job with row-wise tables exchanges rows by all-to-all
            metrics.export_on_first_value(
                metrics.TRAINER_REGISTRY,
                metrics.TRAIN_ALLTOALL_SECONDS,
                metrics.TRAIN_ALLTOALL_BYTES,
            )
        # only a trainer with several ranks exports the all-reduce time
        metrics.export_on_first_value(metrics.TRAINER_REGISTRY, metrics.TRAIN_ALLREDUCE_SECONDS)

    def reduce(
        self,
        params: Sequence[nn.Parameter],
        loss: torch.Tensor,
        weights: torch.Tensor,
        score_sum: torch.Tensor,
        samples: int,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Replace every ``p.grad`` by the union-batch gradient; return the union loss, score
        sum and sample count (the same on every rank, so every rank's guard decides alike).

        1. Pack ``W_r * grad`` of every parameter (zeros where a rank has none) and the scalars
           ``W_r * loss, W_r, samples, score_sum`` into one flat buffer: one collective a step.
        2. All-reduce it (sum). A NaN or inf on any rank reaches every rank.
        3. Divide by ``W`` and write the gradients back.
        4. Sparse gradients: all-gather every rank's ``W_r *`` rows, sum, divide by ``W``.

        Row-wise shards go first (before 1): every rank sends its lookups' ``W_r *``
        gradients to their owners (all-to-all); the squared norm of what this rank's shards
        received joins the buffer's scalars, and after 3 each shard's sum is divided by ``W``.
        """
        total_weight = weights.sum().to(torch.float32)
        sharded_ids = {id(p) for p in self._sharded}
        dense = [p for p in params if id(p) not in self._sparse]
        sparse = [p for p in params if id(p) in self._sparse and id(p) not in sharded_ids]
        shard_grads = {}
        if self._exchange is not None:
            shard_grads = self._exchange.push_gradients(self._sharded, total_weight)
            moved = self._exchange.take_stats()  # this step's lookups and gradients
            metrics.TRAIN_ALLTOALL_SECONDS.observe(moved.seconds)
            metrics.TRAIN_ALLTOALL_BYTES.inc(moved.bytes_sent)
        shard_square = sum(
            (g.values().float().square().sum() for g in shard_grads.values()),
            torch.zeros((), device=loss.device),
        )
        parts = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            * total_weight
            for p in dense
        ]
        scalars = torch.stack(
            [
                loss.float() * total_weight,
                total_weight,
                torch.tensor(float(samples), device=loss.device),
                score_sum.float(),
            ]
        )
        buffer = torch.cat([*parts, shard_square.reshape(1), scalars.to(loss.device)])
        started = time.perf_counter()
        dist.all_reduce(buffer)
        union_samples = int(buffer[-2].item())  # also waits for an asynchronous (NCCL) reduce
        weight = buffer[-3].clamp_min(torch.finfo(torch.float32).tiny)
        gather_sparse_grads(sparse, total_weight, weight)
        for p in self._sharded:
            p.grad = divided_gradient(shard_grads[id(p)], weight, p)
        metrics.TRAIN_ALLREDUCE_SECONDS.observe(time.perf_counter() - started)
        offset = 0
        for p in dense:
            size = p.numel()
            p.grad = (buffer[offset : offset + size] / weight).view_as(p).to(p.dtype)
            offset += size
        union_loss = buffer[-4] / weight
        if self._sharded and not bool(
            torch.isfinite(buffer[-5])
        ):  # a rank's shard holds a non-finite row
            union_loss = torch.full_like(union_loss, float("nan"))
        return union_loss, buffer[-1], union_samples

    def gather_ids(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """The union batch's IDs of each dynamic table (``sparse_sync.gather_ids``)."""
        return gather_ids(ids)


class MomentsSync:
    """Union-batch mean and variance for :class:`OnlineStandardize` (Chan's parallel merge).

    Every rank all-gathers ``(elements, mean, M2, samples)`` of its own batch and merges them
    in rank order, so all ranks fold the same moments into identical statistics.
    """

    def __call__(
        self, x: torch.Tensor, dims: tuple[int, ...], keepdim: bool
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        values = x.to(torch.float64)
        sums = values.sum(dim=dims, keepdim=keepdim)
        if keepdim:
            sums = sums.squeeze(0)
        elements = values.numel() // max(sums.numel(), 1)
        mean = sums / max(elements, 1)
        centred = values - (mean.unsqueeze(0) if keepdim else mean)
        m2 = centred.square().sum(dim=dims, keepdim=keepdim)
        if keepdim:
            m2 = m2.squeeze(0)
        head = torch.tensor([float(elements), float(x.shape[0])], dtype=torch.float64)
        packed = torch.cat([head.to(x.device), mean.reshape(-1), m2.reshape(-1)])
        gathered = [torch.empty_like(packed) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, packed)
        stacked = torch.stack(gathered)  # [world, 2 + 2 * stats], rows in rank order
        counts, stat = stacked[:, 0:1], sums.numel()
        means, m2s = stacked[:, 2 : 2 + stat], stacked[:, 2 + stat :]
        total = counts.sum().clamp_min(1.0)
        union_mean = (counts * means).sum(0) / total
        union_m2 = (m2s + counts * (means - union_mean).square()).sum(0)
        shape = sums.shape
        union_var = (union_m2 / total).reshape(shape).to(x.dtype)
        return int(stacked[:, 1].sum().item()), union_mean.reshape(shape).to(x.dtype), union_var


def attach_moments_sync(model: nn.Module) -> int:
    """Make every online standardiser in ``model`` fold in union-batch moments; return how many."""
    layers = [m for m in model.modules() if isinstance(m, OnlineStandardize)]
    sync = MomentsSync()
    for layer in layers:
        layer.moments_sync = sync
    return len(layers)


def _sum_over_ranks(loss_sums: torch.Tensor) -> torch.Tensor:
    summed = loss_sums.detach().clone()
    dist.all_reduce(summed)
    return summed


def attach_loss_sync(model: nn.Module) -> bool:
    """Make the model's head mixer (``auto``) move by the heads' losses summed over every
    rank's batch, so all ranks hold identical mixture weights; return whether it has one."""
    mixer = find_mixer(model)
    if mixer is not None:
        mixer.loss_sync = _sum_over_ranks
    return mixer is not None
