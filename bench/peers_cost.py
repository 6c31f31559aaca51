"""CPU time per sample of the default ``auto`` against the ``mlp``, interleaved in one process.

Wall-clock samples/s on a shared machine swing with the load (bench/README.md, Peers); process
CPU time per sample of the two models' ``Learner.learn``, taken in alternating rounds in one
process on one torch thread, is what the issue's cost goal (``auto`` <= 1.3x ``mlp``) is read
from. On a shared machine that ratio still swings by about 0.1 from run to run, so the table
also gives what does not depend on the load: the torch operations dispatched per sample
(forward, loss, backward, optimizer; counted below autograd over the same rounds' steps). A
step at batch 1 is ~100 small operations whose cost is mostly per call, so their ratio is
what the CPU-time ratio tends to.

The rounds are paired: in each, both models learn the same number of steps, in an order that
reverses every round (``mlp`` first, then ``auto`` first: a fixed order times the later one
on a warmer or colder machine), each after a full collection, so neither pays for garbage the
other left. The ratio column is the median of the rounds' own ratios (a round disturbed by
another process moves one pair, not the whole figure); the ratio of the summed times is
printed beside it.

Usage::

    flock -w 1500 /work/bench.lock .venv/bin/python bench/peers_cost.py
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from peers_inprocess import ModelConfig, build_learner
from peers_streams import Stream
from torch.utils._python_dispatch import TorchDispatchMode

from streamtrain.train.learner import Learner

TASKS = {"binary": 2, "multiclass": 3, "regression": 0}


def _stream(task: str, samples: int, features: int = 10) -> Stream:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(samples, features, generator=g)
    score = x[:, 0] - x[:, 1] + 0.5 * x[:, 2] * x[:, 3]
    if TASKS[task] == 0:
        labels = (score * 10 + 40).numpy()
    elif TASKS[task] == 2:
        labels = (score > 0).long().numpy()
    else:
        labels = torch.bucketize(score, torch.tensor([-0.5, 0.5])).numpy()
    return Stream(f"cost-{task}", "synthetic", x.numpy(), labels, TASKS[task])


def _cpu_per_sample(learner: Learner, stream: Stream, batch: int, start: int, steps: int) -> float:
    x = torch.from_numpy(stream.features)
    y = torch.from_numpy(stream.labels)
    w = torch.ones(len(y))
    gc.collect()
    began = time.process_time()
    for i in range(start, start + steps * batch, batch):
        learner.learn(x[i : i + batch], y[i : i + batch], w[i : i + batch])
    return (time.process_time() - began) / (steps * batch)


class _OpCounter(TorchDispatchMode):
    """Counts every operation that reaches the dispatcher below autograd."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def _ops_per_sample(learner: Learner, stream: Stream, batch: int, start: int, steps: int) -> float:
    x = torch.from_numpy(stream.features)
    y = torch.from_numpy(stream.labels)
    w = torch.ones(len(y))
    with _OpCounter() as counter:
        for i in range(start, start + steps * batch, batch):
            learner.learn(x[i : i + batch], y[i : i + batch], w[i : i + batch])
    return counter.count / (steps * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| task | batch | `mlp` µs/sample | `auto` µs/sample | `auto` ÷ `mlp` (median of rounds) "
        "| ratio of sums | torch ops/sample `mlp` / `auto` (ratio) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for task in TASKS:
        for batch in args.batches:
            stream = _stream(task, (args.rounds + 2) * args.steps * batch)
            learners = {n: build_learner(ModelConfig(n), stream, batch) for n in ("mlp", "auto")}
            spent: dict[str, list[float]] = {name: [] for name in learners}
            for learner in learners.values():  # warm-up round, not counted
                _cpu_per_sample(learner, stream, batch, 0, args.steps)
            for r in range(1, args.rounds + 1):
                order = list(learners) if r % 2 else list(reversed(learners))
                for name in order:
                    start = r * args.steps * batch
                    took = _cpu_per_sample(learners[name], stream, batch, start, args.steps)
                    spent[name].append(took)
            mlp, auto = (sum(spent[n]) / args.rounds * 1e6 for n in ("mlp", "auto"))
            paired = statistics.median(
                a / m for m, a in zip(spent["mlp"], spent["auto"], strict=True)
            )
            # one more round, counted, not timed (the counting itself costs)
            start = (args.rounds + 1) * args.steps * batch
            ops = {
                n: _ops_per_sample(lr, stream, batch, start, args.steps)
                for n, lr in learners.items()
            }
            counted = f"{ops['mlp']:.1f} / {ops['auto']:.1f} ({ops['auto'] / ops['mlp']:.2f})"
            print(
                f"| {task} | {batch} | {mlp:,.0f} | {auto:,.0f} | {paired:.2f} "
                f"| {auto / mlp:.2f} | {counted} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
