"""A snapshot of a model with row-wise sharded tables: rank 0 assembles every rank's rows.

Servers load whole tables (docs/snapshots.md), so a sharded job still publishes one snapshot
per version, signed and delta-encoded as a replicated job's. What differs is where its rows
come from: the rows of a sharded table are spread over the ranks, so publishing is a
collective taken at the same step by every rank:

1. Rank 0 alone decides (sink, policy, promotion gate) and broadcasts the decision: the other
   ranks never publish, so one version is never assembled from two steps' rows.
2. Every rank takes its row tracker's rows (local rows of its shards); the ranks all-reduce
   whether any of them must publish a base (a tracker that says so, e.g. after a rollback).
3. Every rank sends rank 0 its shards' changed rows (a base: all of them) as global rows with
   their values; rank 0 writes them into the snapshot under the table's own name, so the
   payload is exactly what a single trainer with the whole table would publish.

Rank 0 holds one whole copy of each sharded table's weights (no optimizer state) while a
base is assembled: the serving footprint, not the training one (docs/scaling.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from streamtrain.train.models.embedding import EmbeddingTables
from streamtrain.train.models.row_layout import ShardLayout
from streamtrain.train.row_tracker import RowTracker
from streamtrain.train.weights import SnapshotCopy, copy_weights


def sharded_names(model: nn.Module) -> dict[str, int]:
    """The state names of the model's sharded weights, with each table's global row count."""
    out = {}
    for prefix, module in model.named_modules():
        if isinstance(module, EmbeddingTables):
            for name, rows in module.sharded_rows.items():
                out[f"{prefix}.{name}" if prefix else name] = rows
    return out


def _gather_to_leader(
    mine: torch.Tensor, world: int, comm: torch.device
) -> list[torch.Tensor] | None:
    """Every rank's ``mine`` (same trailing shape, any length) on rank 0; None elsewhere."""
    count = torch.tensor([mine.shape[0]], dtype=torch.int64, device=comm)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    lengths = [int(c) for c in counts]
    slots = max(max(lengths), 1)
    padded = mine.new_zeros((slots, *mine.shape[1:])).to(comm)
    padded[: mine.shape[0]] = mine.to(comm)
    leader = dist.get_rank() == 0
    parts = [torch.empty_like(padded) for _ in range(world)] if leader else None
    dist.gather(padded, parts, dst=0)
    if parts is None:
        return None
    return [p[:n].cpu() for p, n in zip(parts, lengths, strict=True)]


def assemble_snapshot(
    model: nn.Module,
    tracker: RowTracker | None,
    names: dict[str, int],
    layout: ShardLayout,
    comm: torch.device,
) -> SnapshotCopy:
    """Steps 2-3 of the module doc on every rank; rank 0 gets the snapshot's tensors, the
    function that waits for them and its rows (None: a base). Other ranks get empty tensors."""
    taken = None if tracker is None else tracker.take()
    base = torch.tensor([int(taken is None)], dtype=torch.int64, device=comm)
    dist.all_reduce(base, op=dist.ReduceOp.MAX)
    rows = None if int(base) else taken
    state = dict(model.state_dict())
    own: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in names:
        weight = state[name].detach()
        if rows is None:
            local = torch.arange(weight.shape[0], device=weight.device)
        else:
            local = rows.get(name, torch.empty(0, dtype=torch.int64)).to(weight.device)
        own[name] = (local * layout.world + layout.rank, weight[local])
    gathered = {
        name: (
            _gather_to_leader(global_rows, layout.world, comm),
            _gather_to_leader(values, layout.world, comm),
        )
        for name, (global_rows, values) in own.items()
    }
    if layout.rank != 0:
        return SnapshotCopy({}, _noop, None, complete=False)
    # a delta copies none of the local shards' rows here (an empty selection): they come
    # from the gather below
    nothing = torch.empty(0, dtype=torch.int64)
    plain_rows = None if rows is None else {**rows, **dict.fromkeys(names, nothing)}
    tensors, wait_ready = copy_weights(model, plain_rows)
    out_rows = None if plain_rows is None else dict(plain_rows)
    for name, (row_parts, value_parts) in gathered.items():
        assert row_parts is not None and value_parts is not None  # rank 0
        global_rows, values = torch.cat(row_parts), torch.cat(value_parts)
        order = torch.argsort(global_rows)
        if out_rows is None:
            whole = values.new_empty((names[name], *values.shape[1:]))
            whole[global_rows] = values
            tensors[name] = whole
        else:
            tensors[name], out_rows[name] = values[order], global_rows[order]
    # complete=False: a base carries every row (gathered above), never left for the sink to
    # complete from its own copy
    return SnapshotCopy(tensors, wait_ready, out_rows, complete=False)


def _noop() -> None:
    return None
