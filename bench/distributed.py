"""What several trainer ranks cost and buy: step throughput for 1 and 2 ranks, all-reduce time
against the gradient size, and the share of a step spent communicating (gloo, CPU).

Run: ``.venv/bin/python bench/distributed.py [--steps 300] [--batch 256] [--sizes-mb 1 10 100]``

1. Step throughput: ``Learner.learn`` on pre-built tensors (no Kafka: the step alone), the MLP
   16 -> 64 -> 2 with Adam, ``--batch`` samples per rank per step, one torch thread per rank.
   One rank runs the plain learner; two ranks run it with the distributed step (gradient
   all-reduce, union-batch standardisation moments). Samples/s counts every rank's samples.
   ``comm share`` is the all-reduce's share of a rank's step wall time
   (``streamtrain_train_allreduce_seconds``).
2. All-reduce time vs size: two gloo ranks all-reduce a float32 buffer of each size, the
   median of ``--repeats`` after one warm-up.
3. Sparse embedding gradients vs rows touched: two gloo ranks each hold a replicated table of
   ``--table-rows`` x ``--dim`` float32 and a sparse gradient naming ``--touched`` distinct
   random rows (each rank its own draw); the time of ``gather_sparse_grads`` (all-gather of
   rows and values, sum, coalesce) and of the row-wise Adagrad step on the result, beside a
   dense all-reduce of the whole table (what a dense gradient would cost), medians of
   ``--repeats``.
4. ``--sharded`` (alone): a row-wise sharded table too big for one rank's memory cap, beside
   the replicated layout where it fits (``bench/sharded_tables.py``).

Every figure comes from processes on this machine, in one run, side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sharded_tables import sharded_section

from streamtrain import metrics
from streamtrain.distributed.sparse_sync import gather_sparse_grads
from streamtrain.distributed.step_sync import GradientSync, attach_moments_sync
from streamtrain.sample.spec import SampleSpec
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead

SPEC = SampleSpec(feature_shape=(16,), task="binary")


def _learner() -> Learner:
    torch.manual_seed(0)
    model = build_model("mlp", SPEC, {"hidden_sizes": [64]})
    return Learner(model, TaskHead(SPEC), build_optimizer(model.parameters(), "adam", lr=1e-3))


def _steps(learner: Learner, steps: int, batch: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(16):
        x = torch.randn(batch, 16, generator=g)
        batches.append((x, (x[:, 0] > 0).long(), torch.ones(batch)))
    for x, y, w in batches[:4]:  # warm-up
        learner.learn(x, y, w)
    started = time.perf_counter()
    for i in range(steps):
        x, y, w = batches[i % len(batches)]
        learner.learn(x, y, w)
    return time.perf_counter() - started


def _rank_steps(rank: int, store: str, steps: int, batch: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        learner = _learner()
        learner.step_reducer = GradientSync()
        attach_moments_sync(learner.model)
        dist.barrier()
        before = _allreduce_seconds()
        elapsed = _steps(learner, steps, batch, seed=rank)
        reduced = _allreduce_seconds() - before
        Path(f"{out}/rank{rank}.txt").write_text(f"{elapsed} {reduced}")
    finally:
        dist.destroy_process_group()


def _allreduce_seconds() -> float:
    for family in metrics.TRAIN_ALLREDUCE_SECONDS.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                return float(sample.value)
    return 0.0


def _rank_allreduce(rank: int, store: str, sizes_mb: list[float], repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        lines = []
        for size in sizes_mb:
            buffer = torch.ones(int(size * 1e6 / 4))
            dist.all_reduce(buffer)  # warm-up: connections and allocation
            times = []
            for _ in range(repeats):
                dist.barrier()
                started = time.perf_counter()
                dist.all_reduce(buffer)
                times.append(time.perf_counter() - started)
            lines.append(f"{size} {statistics.median(times)}")
        Path(f"{out}/allreduce{rank}.txt").write_text("\n".join(lines))
    finally:
        dist.destroy_process_group()


def _median_seconds(action: object, repeats: int) -> float:
    assert callable(action)
    action()  # warm-up: connections and allocation
    times = []
    for _ in range(repeats):
        dist.barrier()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _rank_sparse(
    rank: int, store: str, table_rows: int, dim: int, touched: list[int], repeats: int, out: str
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        table = torch.nn.Parameter(torch.zeros(table_rows, dim))
        optimizer = torch.optim.Adagrad([table], lr=0.01)
        g = torch.Generator().manual_seed(rank)
        one = torch.ones(())
        lines = []
        for n in touched:
            rows = torch.randperm(table_rows, generator=g)[:n]
            values = torch.randn(n, dim)
            local = torch.sparse_coo_tensor(
                rows.unsqueeze(0), values, table.shape, check_invariants=False
            )

            def gather(local: torch.Tensor = local) -> None:
                table.grad = local
                gather_sparse_grads([table], one, one)

            gather_s = _median_seconds(gather, repeats)
            step_s = _median_seconds(optimizer.step, repeats)  # on the last gathered gradient
            union = table.grad._nnz() if table.grad is not None else 0
            lines.append(f"{n} {union} {gather_s} {step_s}")
        dense = torch.ones(table_rows, dim)
        lines.append(f"dense {_median_seconds(lambda: dist.all_reduce(dense), repeats)}")
        Path(f"{out}/sparse{rank}.txt").write_text("\n".join(lines))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--table-rows", type=int, default=1 << 18)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--touched", type=int, nargs="+", default=[256, 4096, 16384, 65536])
    parser.add_argument("--only-sparse", action="store_true", help="run section 3 alone")
    parser.add_argument(
        "--sharded", action="store_true", help="run section 4 alone (bench/sharded_tables.py)"
    )
    parser.add_argument("--rows", type=int, default=1 << 20, help="section 4's big table")
    parser.add_argument("--small-rows", type=int, default=1 << 18, help="section 4's small table")
    parser.add_argument("--cap-mb", type=int, default=800, help="section 4's RLIMIT_AS margin")
    parser.add_argument("--ids", type=int, default=8, help="section 4: IDs per sample")
    parser.add_argument(
        "--features", type=int, default=1, help="section 4: sparse features on the table"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    params = sum(p.numel() for p in _learner().model.parameters())
    print(f"cores: {os.cpu_count()}; MLP 16-64-2 ({params} parameters), Adam, batch {args.batch}")

    if args.sharded:
        args.steps = min(args.steps, 100)
        sharded_section(args)
        return
    if not args.only_sparse:
        _dense_sections(args)
    _sparse_section(args)


def _dense_sections(args: argparse.Namespace) -> None:
    one = _steps(_learner(), args.steps, args.batch, seed=0)
    one_rate = args.steps * args.batch / one
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _rank_steps,
            args=(f"{tmp}/store", args.steps, args.batch, tmp),
            nprocs=2,
            start_method="spawn",
        )
        results = [Path(f"{tmp}/rank{r}.txt").read_text().split() for r in (0, 1)]
    elapsed = max(float(r[0]) for r in results)
    comm = statistics.mean(float(r[1]) / float(r[0]) for r in results)
    two_rate = 2 * args.steps * args.batch / elapsed
    print("\n| ranks | samples/s | step ms | comm share |")
    print("|---|---|---|---|")
    print(f"| 1 | {one_rate:,.0f} | {1000 * one / args.steps:.2f} | - |")
    print(f"| 2 (gloo) | {two_rate:,.0f} | {1000 * elapsed / args.steps:.2f} | {comm:.0%} |")
    print(f"\n2 ranks / 1 rank: {two_rate / one_rate:.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _rank_allreduce,
            args=(f"{tmp}/store", args.sizes_mb, args.repeats, tmp),
            nprocs=2,
            start_method="spawn",
        )
        rows = [line.split() for line in Path(f"{tmp}/allreduce0.txt").read_text().splitlines()]
    print("\n| gradient MB | all-reduce ms (2 gloo ranks) | algorithm bandwidth GB/s |")
    print("|---|---|---|")
    for size, seconds in rows:
        mb, s = float(size), float(seconds)
        print(f"| {mb:g} | {1000 * s:.1f} | {mb / 1000 / s:.2f} |")


def _sparse_section(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _rank_sparse,
            args=(f"{tmp}/store", args.table_rows, args.dim, args.touched, args.repeats, tmp),
            nprocs=2,
            start_method="spawn",
        )
        *rows, dense = [
            line.split() for line in Path(f"{tmp}/sparse0.txt").read_text().splitlines()
        ]
    table_mb = args.table_rows * args.dim * 4 / 1e6
    print(f"\nReplicated table {args.table_rows:,} x {args.dim} float32 ({table_mb:.0f} MB)")
    print("| rows touched per rank | union rows | MB gathered per rank | gather ms | Adagrad ms |")
    print("|---|---|---|---|---|")
    for n, union, gather_s, step_s in rows:
        received = 2 * int(n) * (args.dim * 4 + 8) / 1e6  # float32 values, int64 row
        gather_ms, step_ms = 1000 * float(gather_s), 1000 * float(step_s)
        print(f"| {int(n):,} | {int(union):,} | {received:.1f} | {gather_ms:.1f} | {step_ms:.1f} |")
    print(f"| dense all-reduce of the whole table | | | {1000 * float(dense[1]):.1f} | |")


if __name__ == "__main__":
    main()
