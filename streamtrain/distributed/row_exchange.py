"""Row-wise sharded tables across ranks: lookups and gradients travel by all-to-all.

Rank ``r`` of ``n`` holds the rows ``g % n == r`` of every ``row_wise`` table
(:mod:`streamtrain.train.models.row_layout`). A step:

1. **Lookup** (in the forward, :meth:`RowExchange.lookup`): the requester de-duplicates the
   rows its batch reads, sorts them by owner and sends each owner its rows (one
   ``all_to_all_single`` of the counts, one of the rows); each owner answers with the values
   (one more). The requester pools them as the table would. The received values are a leaf
   that requires a gradient, so backward stops at the requester.
2. **Gradient** (in the step's reduction, :meth:`RowExchange.push_gradients`): each requester
   multiplies its leaves' gradients by its batch weight ``W_r`` and sends them back to the
   owners with the same splits reversed; each owner sums what arrived into one coalesced
   sparse gradient of its shard and divides by the union weight ``W``: the union-batch
   gradient of its rows, as the replicated layout's all-gather gives every rank.
3. Each owner's row-wise optimizer (Adagrad, SGD) steps only its rows.

Every rank calls the same lookups in the same order (the lockstep trainer steps every rank,
an empty batch included), so the collectives pair up. ``all_to_all_single`` runs on gloo and
NCCL alike; TorchRec's CPU planner offers only table-wise sharding (docs/scaling.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from streamtrain.train.models.embedding import EmbeddingTables
from streamtrain.train.models.row_layout import ShardLayout


@dataclass
class _Fetched:
    """One lookup whose gradient is still to travel back to the owners."""

    weight: torch.Tensor
    leaf: torch.Tensor  # [sent rows, dim], in the order the rows were sent
    sent: list[int]  # rows sent to each rank
    received: list[int]  # rows received from each rank
    local: torch.Tensor  # the received rows' local indices in this rank's shard


@dataclass
class ExchangeStats:
    """What the exchange moved since the last :meth:`RowExchange.take_stats`."""

    bytes_sent: int = 0  # to the other ranks (not the rows a rank owns itself)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Plan:
    """One request's distinct rows sorted by owner, and the way back to its IDs' order."""

    wanted: torch.Tensor  # distinct rows, sorted by owner
    sent: torch.Tensor  # how many go to each owner [world]
    inverse_order: torch.Tensor  # wanted position -> distinct position, inverted
    inverse: torch.Tensor  # each requested ID -> its distinct row


def _plan(rows: torch.Tensor, layout: ShardLayout) -> _Plan:
    unique, inverse = torch.unique(rows, return_inverse=True)
    owners = layout.owner(unique)
    order = torch.argsort(owners, stable=True)
    inverse_order = torch.empty_like(order)
    inverse_order[order] = torch.arange(order.numel(), device=order.device)
    sent = torch.bincount(owners, minlength=layout.world).to(torch.int64)
    return _Plan(unique[order], sent, inverse_order, inverse)


def _row_numel(tensor: torch.Tensor) -> int:
    """Elements in one row of ``tensor`` (its values travel flattened)."""
    return math.prod(tensor.shape[1:])


class RowExchange:
    """The :class:`~streamtrain.train.models.row_layout.RowLookup` of a distributed rank."""

    def __init__(self, layout: ShardLayout) -> None:
        self._layout = layout
        self._pending: list[_Fetched] = []
        self.stats = ExchangeStats()

    def _all_to_all(self, data: torch.Tensor, receive: list[int], send: list[int]) -> torch.Tensor:
        out = data.new_empty((sum(receive), *data.shape[1:]))
        started = time.perf_counter()
        dist.all_to_all_single(out, data, output_split_sizes=receive, input_split_sizes=send)
        self.stats.seconds += time.perf_counter() - started
        # what leaves this rank: its own split stays in memory
        row_bytes = data[0].numel() * data.element_size() if len(data) else 0
        self.stats.bytes_sent += (sum(send) - send[self._layout.rank]) * row_bytes
        return out

    def take_stats(self) -> ExchangeStats:
        stats, self.stats = self.stats, ExchangeStats()
        return stats

    def lookup(self, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Each global row's values ``[len(rows), dim]``, read from its owner."""
        return self.lookup_many([(weight, rows)])[0]

    def lookup_many(
        self, requests: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> list[torch.Tensor]:
        """:meth:`lookup` of every request (one per sharded feature) in one exchange: one
        all-to-all of the counts (per feature), one of the rows, one of the values, whatever
        the number of features. Tables of one dtype; their dimensions may differ (values
        travel flattened)."""
        if not requests:
            return []
        layout, world = self._layout, self._layout.world
        plans = [_plan(rows, layout) for _, rows in requests]
        sent = torch.stack([p.sent for p in plans], dim=1)  # [owner, feature]
        received = torch.empty_like(sent)  # [requester, feature]
        dist.all_to_all_single(received.view(-1), sent.view(-1))  # equal splits: one row each
        send_rows, recv_rows = sent.sum(1).tolist(), received.sum(1).tolist()
        wanted = [torch.split(p.wanted, sent[:, f].tolist()) for f, p in enumerate(plans)]
        asked = torch.split(  # requester-major, then feature
            self._all_to_all(
                torch.cat([wanted[f][d] for d in range(world) for f in range(len(plans))]),
                recv_rows,
                send_rows,
            ),
            received.view(-1).tolist(),
        )
        local = [
            layout.local(torch.cat([asked[s * len(plans) + f] for s in range(world)]))
            for f in range(len(plans))
        ]
        dims = torch.tensor([_row_numel(weight) for weight, _ in requests])
        by_owner = [
            torch.split(requests[f][0].detach()[local[f]], received[:, f].tolist())
            for f in range(len(plans))
        ]
        answer = torch.split(  # owner-major, then feature
            self._all_to_all(
                torch.cat(
                    [by_owner[f][s].reshape(-1) for s in range(world) for f in range(len(plans))]
                ),
                (sent * dims).sum(1).tolist(),
                (received * dims).sum(1).tolist(),
            ),
            (sent * dims).view(-1).tolist(),
        )
        out = []
        for f, ((weight, _), plan) in enumerate(zip(requests, plans, strict=True)):
            values = torch.cat([answer[d * len(plans) + f] for d in range(world)])
            values = values.view(-1, *weight.shape[1:])
            if torch.is_grad_enabled() and weight.requires_grad:
                values.requires_grad_(True)
                self._pending.append(
                    _Fetched(weight, values, sent[:, f].tolist(), received[:, f].tolist(), local[f])
                )
            # values[i] holds the row wanted[i] = unique[order[i]]: undo the sort, then expand
            out.append(values[plan.inverse_order][plan.inverse])
        return out

    def push_gradients(
        self, weights: Sequence[torch.Tensor], scale: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """Send every pending lookup's gradient, times ``scale`` (``W_r``), to its owners, all
        in one all-to-all; return per weight (by ``id``) the summed, coalesced sparse gradient
        of this rank's shard, not yet divided by the union weight. Clears the pending lookups."""
        pending, self._pending = self._pending, []
        world = self._layout.world
        grads = []
        for fetched in pending:
            grad = fetched.leaf.grad
            if grad is None:
                grad = torch.zeros_like(fetched.leaf)
            grads.append(torch.split((grad.float() * scale).to(grad.dtype), fetched.sent))
        dims = [_row_numel(f.leaf) for f in pending]
        send = [
            sum(f.sent[d] * n for f, n in zip(pending, dims, strict=True)) for d in range(world)
        ]
        recv = [
            sum(f.received[s] * n for f, n in zip(pending, dims, strict=True)) for s in range(world)
        ]
        back = (
            torch.split(  # requester-major, then lookup
                self._all_to_all(
                    torch.cat([g[d].reshape(-1) for d in range(world) for g in grads]), recv, send
                ),
                [
                    f.received[s] * n
                    for s in range(world)
                    for f, n in zip(pending, dims, strict=True)
                ],
            )
            if pending
            else ()
        )
        parts: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {
            id(w): ([], []) for w in weights
        }
        for i, fetched in enumerate(pending):
            rows, values = parts[id(fetched.weight)]
            rows.append(fetched.local)
            pieces = [back[s * len(pending) + i] for s in range(world)]
            values.append(torch.cat(pieces).view(-1, *fetched.leaf.shape[1:]))
        out = {}
        for w in weights:
            rows, values = parts[id(w)]
            if not rows:
                rows, values = (
                    [w.new_empty((0,), dtype=torch.int64)],
                    [w.new_empty((0, *w.shape[1:]))],
                )
            out[id(w)] = torch.sparse_coo_tensor(
                torch.cat(rows).unsqueeze(0), torch.cat(values), w.shape, check_invariants=False
            ).coalesce()
        return out

    def discard(self) -> None:
        """Forget pending lookups (a step that will not reduce, e.g. an evaluation forward)."""
        self._pending = []


def attach_row_exchange(model: nn.Module) -> tuple[RowExchange | None, list[nn.Parameter]]:
    """Give every sharded embedding table in ``model`` one exchange; return it and the sharded
    weights (none and empty when the model has no row-wise table)."""
    tables = [m for m in model.modules() if isinstance(m, EmbeddingTables) and m.sharded]
    if not tables:
        return None, []
    exchange = RowExchange(tables[0].layout)
    weights: list[nn.Parameter] = []
    for module in tables:
        module.exchange = exchange
        weights += module.sharded_weights
    return exchange, weights
