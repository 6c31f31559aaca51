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
        layout = self._layout
        unique, inverse = torch.unique(rows, return_inverse=True)
        owners = layout.owner(unique)
        order = torch.argsort(owners, stable=True)
        wanted = unique[order]
        sent = torch.bincount(owners, minlength=layout.world).to(torch.int64)
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent)  # one count per pair of ranks
        send_counts, receive_counts = sent.tolist(), received.tolist()
        asked = self._all_to_all(wanted, receive_counts, send_counts)
        local = layout.local(asked)
        answer = self._all_to_all(weight.detach()[local], send_counts, receive_counts)
        if torch.is_grad_enabled() and weight.requires_grad:
            answer.requires_grad_(True)
            self._pending.append(_Fetched(weight, answer, send_counts, receive_counts, local))
        inverse_order = torch.empty_like(order)
        inverse_order[order] = torch.arange(order.numel(), device=order.device)
        # answer[i] holds the row wanted[i] = unique[order[i]]: undo the sort, then expand
        values: torch.Tensor = answer[inverse_order][inverse]
        return values

    def push_gradients(
        self, weights: Sequence[torch.Tensor], scale: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """Send every pending lookup's gradient, times ``scale`` (``W_r``), to its owners;
        return per weight (by ``id``) the summed, coalesced sparse gradient of this rank's
        shard, not yet divided by the union weight. Clears the pending lookups."""
        parts: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {
            id(w): ([], []) for w in weights
        }
        for fetched in self._pending:
            grad = fetched.leaf.grad
            if grad is None:
                grad = torch.zeros_like(fetched.leaf)
            back = self._all_to_all(
                (grad.float() * scale).to(grad.dtype), fetched.received, fetched.sent
            )
            rows, values = parts[id(fetched.weight)]
            rows.append(fetched.local)
            values.append(back)
        self._pending = []
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
