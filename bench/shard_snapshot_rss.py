"""Rank 0's peak memory while it takes a base snapshot of a row-wise sharded table.

Two gloo ranks build a ``dlrm`` whose one table of ``--rows`` x ``--dim`` float32 is
``row_wise`` (each rank holds half), then take one base snapshot and serialise it as the
publisher does (``encode_state``: the safetensors payload it chunks onto the topic):

- ``shards`` (this release, ``distributed/shard_snapshot.py``): each rank copies its own
  shard and publishes it; servers assemble the table.
- ``gather`` (the previous release's rank 0, commit 61c4539, re-enacted here as the
  baseline): every rank sends rank 0 its rows; rank 0 builds the whole table and publishes
  one snapshot.

Rank 0's peak resident memory is read from ``VmHWM`` after resetting it (``clear_refs``) just
before the snapshot, so the figure is the snapshot's own, not the model build's. Each mode
runs in fresh processes.

    python bench/shard_snapshot_rss.py --rows 1048576 --dim 64
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from streamtrain.distributed.shard_snapshot import sharded_names, take_shard
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.snapshot.payload import encode_state
from streamtrain.train.models import build_model
from streamtrain.train.weights import copy_weights

SPEC = SampleSpec((4,), "binary", sparse=(SparseFeature("ids", "items", 8),))
CPU = torch.device("cpu")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _gathered_base(model: torch.nn.Module, names: dict[str, int]) -> dict[str, torch.Tensor]:
    """The baseline: rank 0 receives every rank's rows and builds each whole table."""
    rank, world = dist.get_rank(), dist.get_world_size()
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    if rank == 0:
        tensors, _ = copy_weights(
            model, {name: torch.empty(0, dtype=torch.int64) for name in names}
        )
    for name, rows in names.items():
        local = state[name].detach()
        slots = (rows + world - 1) // world
        padded = local.new_zeros((slots, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
        dist.gather(padded, parts, dst=0)
        if parts is not None:
            whole = local.new_empty((rows, *local.shape[1:]))
            for r, part in enumerate(parts):
                whole[r::world] = part[: len(range(r, rows, world))]
            tensors[name] = whole
    return tensors


def _run(rank: int, store: str, mode: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        params = {
            "rows": args.rows,
            "embedding_dim": args.dim,
            "bottom_sizes": [16],
            "top_sizes": [16],
            "tables": {"items": {"sharding": "row_wise"}},
        }
        model = build_model("dlrm", SPEC, params)
        names = sharded_names(model)
        dist.barrier()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status_mb("VmRSS")
        if mode == "shards":
            tensors = take_shard(model, None, names, rank, CPU).tensors
        else:
            tensors = _gathered_base(model, names)
        payload, _ = encode_state(tensors) if tensors else (b"", [])
        peak = _status_mb("VmHWM")
        Path(f"{out}/{mode}-{rank}.txt").write_text(f"{before} {peak} {len(payload)}")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 20)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    table_mb = args.rows * args.dim * 4 / 2**20
    print(
        f"\nBase snapshot of a row_wise table of {args.rows:,} x {args.dim} float32 "
        f"({table_mb:,.0f} MiB whole), 2 gloo ranks; rank 0's resident memory"
    )
    print(
        "| mode | rank 0 MiB before | rank 0 peak MiB | snapshot's own MiB | rank 0 payload MiB |"
    )
    print("|---|---|---|---|---|")
    for mode in ("gather", "shards"):
        with tempfile.TemporaryDirectory() as tmp:
            mp.start_processes(
                _run, args=(f"{tmp}/store", mode, args, tmp), nprocs=2, start_method="spawn"
            )
            before, peak, size = (float(v) for v in Path(f"{tmp}/{mode}-0.txt").read_text().split())
        print(
            f"| {mode} | {before:,.0f} | {peak:,.0f} | {peak - before:,.0f} | {size / 2**20:,.0f} |"
        )


if __name__ == "__main__":
    main()
