"""A snapshot of a model with row-wise sharded tables: every rank publishes its own shard.

Servers assemble a version from the shards of one step (``snapshot/shard_assembly.py``,
docs/snapshots.md "Sharded tables"), so no rank ever holds more of a sharded table than its
own rows. Publishing is a collective taken at the same step by every rank:

1. Rank 0 alone decides (policy, promotion gate) and sends the decision with its clock
   (``created_at``): every shard of a step carries the same version and time, which is how a
   server tells the shards of one step from another's. Each rank's publisher keeps its own
   chain (``predecessor_id``), so the ranks publish a step only when no publisher still holds
   a queued request (which a new one would supersede on that rank alone, and the shards of
   the next step would then follow different versions); the decision waits a step instead.
   A publish that failed on any rank makes the next step a base on every rank.
2. Every rank plans with its row tracker (local rows of its shards; the union rows of
   replicated tables). The ranks all-reduce two flags, so every shard of a step is of the same
   kind: any rank that must copy whole (a tracker that lost track, e.g. after a rollback)
   makes every rank copy whole; any rank whose base is due makes it a base on every rank.
3. Each rank copies its part: rank 0 every tensor of its model (replicated weights once, plus
   its rows of each sharded table); the other ranks only their rows of the sharded tables.
   Rows stay *local* (``row_layout.py``): the rank's publisher, its shadow copy and its
   delta merging then see a model of the rank's own shapes; the server maps them to global
   rows from the shard's manifest.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from streamtrain.train.models.embedding import EmbeddingTables
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


def agree_on_snapshot(due: bool, queued: bool, comm: torch.device) -> float | None:
    """Step 1 on every rank: rank 0's clock when it found a snapshot due and no rank's
    publisher still holds a queued one (``queued``); None otherwise (tried again next step)."""
    leader = dist.get_rank() == 0
    vote = [float(due and leader), time.time() if leader else 0.0, float(queued)]
    decision = torch.tensor(vote, dtype=torch.float64, device=comm)
    dist.all_reduce(decision)  # a sum: rank 0's decision and clock, the count of queued ranks
    flag, created_at, waiting = decision.tolist()
    return created_at if flag and not waiting else None


def take_shard(
    model: nn.Module,
    tracker: RowTracker | None,
    names: dict[str, int],
    rank: int,
    comm: torch.device,
    *,
    after_failure: bool = False,
) -> SnapshotCopy:
    """Steps 2-3 on every rank: this rank's shard of the snapshot (rows local).
    ``after_failure``: this rank's last publish failed, so the step is a base everywhere."""
    rows, base = (None, True) if tracker is None else tracker.plan()
    base = base or after_failure
    flags = torch.tensor([int(rows is None), int(base)], dtype=torch.int64, device=comm)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    whole, base = bool(flags[0]), bool(flags[1])
    only = None if rank == 0 else set(names)
    if whole:
        rows = None
    elif only is not None:
        assert rows is not None  # not ``whole``
        rows = {name: index for name, index in rows.items() if name in only}
    tensors, wait_ready = copy_weights(model, rows, only)
    # ``complete``: a base by schedule, finished by this rank's publisher from its own copy of
    # its shard (snapshot/shadow.py), as a single trainer's
    return SnapshotCopy(tensors, wait_ready, rows, base and rows is not None)
