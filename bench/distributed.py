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

from streamtrain import metrics
from streamtrain.distributed.step_sync import GradientSync, attach_moments_sync
from streamtrain.spec import SampleSpec
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    params = sum(p.numel() for p in _learner().model.parameters())
    print(f"cores: {os.cpu_count()}; MLP 16-64-2 ({params} parameters), Adam, batch {args.batch}")

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


if __name__ == "__main__":
    main()
