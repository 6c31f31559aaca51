"""CPU time of a full dynamic table's step, by table size: the mapping's decisions and lookups.

A table of ``capacity`` rows is filled with cold IDs (never seen again), then each step's
batch holds ``--new`` IDs never seen before (each admitted, each evicting a row) and the rest
drawn from the IDs seen so far. A step is ``observe`` (the decisions) plus two ``rows``
lookups of the batch (the prediction and the training forward), as in a prequential trainer.
Prints the CPU time per step (``time.process_time``, one thread) after ``--warmup`` steps.

    PYTHONPATH=. python bench/dynamic_step.py --capacity 100000 1000000 4000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from streamtrain.train.models.dynamic_table import DynamicMapping
from streamtrain.train.models.sparse_params import TableSettings


def step_ms(capacity: int, evict: str, args: argparse.Namespace) -> float:
    mapping = DynamicMapping(
        TableSettings(kind="dynamic", capacity=capacity, fallback_rows=1, evict=evict)
    )
    mapping.observe(-1 - torch.arange(capacity))  # full from the start
    rng = np.random.default_rng(args.seed)
    batches = []
    upto = 0
    for _ in range(args.warmup + args.steps):
        new = np.arange(upto, upto + args.new)
        upto += args.new
        old = rng.integers(0, upto, args.batch - args.new)
        batches.append(torch.from_numpy(np.concatenate([new, old]).astype(np.int64)))
    for ids in batches[: args.warmup]:
        mapping.observe(ids)
    started = time.process_time()
    for ids in batches[args.warmup :]:
        mapping.observe(ids)
        mapping.rows(ids)
        mapping.rows(ids)
    return (time.process_time() - started) / args.steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--evict", nargs="+", default=["lru", "lfu"], choices=["lru", "lfu"])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--new", type=int, default=50, help="never-seen IDs in each batch")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| rows | evict | ms per step (observe + 2 lookups) |")
    print("|---|---|---|")
    for capacity in args.capacity:
        for evict in args.evict:
            print(f"| {capacity:,} | {evict} | {step_ms(capacity, evict, args):.2f} |", flush=True)


if __name__ == "__main__":
    main()
