"""``bench/distributed.py --sharded``: a table too big for one process's memory cap, trained
row-wise sharded on two gloo ranks, beside the replicated layout where that fits.

Each rank runs ``Learner.learn`` of a ``dlrm`` (one sparse feature, ``--ids`` IDs per sample,
drawn uniformly from 2^40 and hashed onto the table) on pre-built batches of ``--batch``
samples, with Adagrad (its per-element sums double the table's bytes, and the learner's
copy of the last good state doubles both: 4 x the table per rank). Before building the
model, each rank caps its own address space (``RLIMIT_AS``) at what it already maps plus
``--cap-mb``: a replicated table of ``--rows`` rows and its Adagrad state do not fit under
it, half of them (one rank's shard) do.

1. Replicated, ``--rows``: tried under the cap; reported as refused by the allocator.
2. Row-wise, ``--rows``: samples/s (both ranks' samples), bytes each rank sends per step
   through the all-to-all (IDs, rows, gradients), and the all-to-all time per step.
3. Both layouts at ``--small-rows`` (fits replicated): the same figures, side by side; the
   replicated bytes are the all-gather's (each rank sends its padded rows and values to the
   other), counted from the batches.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from streamtrain import metrics
from streamtrain.distributed.row_exchange import attach_row_exchange
from streamtrain.distributed.sparse_sync import sparse_embedding_weights
from streamtrain.distributed.step_sync import GradientSync
from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.models.embedding import hash_rows
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead


def _spec(features: int) -> SampleSpec:
    """``features`` sparse features (``ids``, ``ids1``, ...), all reading the one table."""
    names = ["ids", *(f"ids{i}" for i in range(1, features))]
    return SampleSpec((4,), "binary", sparse=tuple(SparseFeature(n, "items", 64) for n in names))


def _mapped_bytes() -> int:
    """This process's current virtual size (``VmSize``), which ``RLIMIT_AS`` limits."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _batches(rank: int, args: argparse.Namespace) -> list[tuple[torch.Tensor, ...]]:
    """Eight batches: dense x, labels, weights, and ``--ids`` IDs per sample."""
    g = torch.Generator().manual_seed(rank)
    out = []
    for _ in range(8):
        x = torch.randn(args.batch, 4, generator=g)
        ids = torch.randint(0, 1 << 40, (args.features * args.batch * args.ids,), generator=g)
        out.append((x, (x[:, 0] > 0).long(), torch.ones(args.batch), ids))
    return out


def _run(rank: int, store: str, rows: int, layout: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    cap = _mapped_bytes() + args.cap_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    result = "refused"
    try:
        params = {
            "rows": rows,
            "embedding_dim": args.dim,
            "bottom_sizes": [16],
            "top_sizes": [16],
            "tables": {"items": {"sharding": layout}},
        }
        try:
            torch.manual_seed(0)
            spec = _spec(args.features)
            model = build_model("dlrm", spec, params)
            opt = build_optimizer(model.parameters(), "adagrad", lr=0.05)
            learner = Learner(model, TaskHead(spec), opt)
            fits = 1
        except (MemoryError, RuntimeError):
            fits = 0
        verdict = torch.tensor([fits])
        dist.all_reduce(verdict, op=dist.ReduceOp.MIN)
        if int(verdict):
            result = _train(learner, rank, rows, args)
    finally:
        Path(f"{out}/{layout}-{rows}-{rank}.txt").write_text(result)
        dist.destroy_process_group()


def _train(learner: Learner, rank: int, rows: int, args: argparse.Namespace) -> str:
    exchange, sharded = attach_row_exchange(learner.model)
    learner.step_reducer = GradientSync(sparse_embedding_weights(learner.model), exchange, sharded)
    batches = _batches(rank, args)
    offsets = torch.arange(0, args.batch * args.ids, args.ids)
    weights = torch.ones(args.batch * args.ids)

    def step(i: int) -> None:
        x, y, w, ids = batches[i % len(batches)]
        # every feature reads its own slice of the batch's IDs
        jagged = [JaggedTensor(part, offsets, weights) for part in ids.chunk(args.features)]
        learner.learn(x, y, w, dict(zip(_spec(args.features).sparse_names, jagged, strict=True)))

    for i in range(3):  # warm-up
        step(i)
    dist.barrier()
    seconds, sent = (
        _metric_sum(metrics.TRAIN_ALLTOALL_SECONDS),
        _metric_sum(metrics.TRAIN_ALLTOALL_BYTES),
    )
    started = time.perf_counter()
    for i in range(args.steps):
        step(i)
    elapsed = time.perf_counter() - started
    a2a = (_metric_sum(metrics.TRAIN_ALLTOALL_SECONDS) - seconds) / args.steps
    sent = (_metric_sum(metrics.TRAIN_ALLTOALL_BYTES) - sent) / args.steps
    if exchange is None:  # replicated: the all-gather's padded rows, from this rank's batches
        unique = max(int(torch.unique(hash_rows(ids, rows)).numel()) for *_, ids in batches)
        sent = unique * (8 + 4 * args.dim)
    return f"{elapsed} {sent} {a2a}"


def _metric_sum(metric: object) -> float:
    """A counter's value or a histogram's sum, as this rank's trainer exports it."""
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_total")):
                return float(sample.value)
    return 0.0


def _table(rows: int, layout: str, args: argparse.Namespace) -> list[str] | None:
    """Per rank ``seconds sent a2a`` of one layout, or None when it did not fit the cap."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _run, args=(f"{tmp}/store", rows, layout, args, tmp), nprocs=2, start_method="spawn"
        )
        results = [Path(f"{tmp}/{layout}-{rows}-{r}.txt").read_text() for r in (0, 1)]
    return None if "refused" in results else results


def sharded_section(args: argparse.Namespace) -> None:
    """Sections 1-3 of the module doc, printed as one markdown table."""
    # glibc reserves 64 MiB of address space per malloc arena (one per thread by default):
    # under RLIMIT_AS that, not the table, would decide what fits
    os.environ["MALLOC_ARENA_MAX"] = "2"
    print(
        f"\nRow-wise sharding: 2 gloo ranks, dlrm, dim {args.dim}, batch {args.batch} x "
        f"{args.ids} IDs per rank and feature, {args.features} feature(s), Adagrad, "
        f"{args.steps} steps; RLIMIT_AS per rank = mapped after start + {args.cap_mb} MiB"
    )
    print(
        "| table rows | layout | MB weights + Adagrad (+ last-good copy) per rank | samples/s | "
        "MB sent per rank per step | all-to-all ms per step |"
    )
    print("|---|---|---|---|---|---|")
    for rows in (args.rows, args.small_rows):
        for layout in ("replicated", "row_wise"):
            share = rows if layout == "replicated" else (rows + 1) // 2
            state_mb = 4 * share * args.dim * 4 / 1e6  # weights, Adagrad, last-good copies
            results = _table(rows, layout, args)
            if results is None:
                print(f"| {rows:,} | {layout} | {state_mb:,.0f} | does not fit the cap | | |")
                continue
            parts = [[float(v) for v in r.split()] for r in results]
            elapsed = max(p[0] for p in parts)
            rate = 2 * args.steps * args.batch / elapsed
            sent = sum(p[1] for p in parts) / 2 / 1e6
            a2a = "-" if layout == "replicated" else f"{1000 * sum(p[2] for p in parts) / 2:.1f}"
            print(f"| {rows:,} | {layout} | {state_mb:,.0f} | {rate:,.0f} | {sent:.2f} | {a2a} |")
