"""Churn on the ``ctr`` click stream: hashed vs dynamic embedding tables at equal memory.

The stream's ID universe keeps growing and old IDs fade: a new item enters the popular ranks
every ``--new-item-every`` samples and pushes the others down (``streamtrain.datasets.ctr``),
so over the run there are many more distinct IDs than rows. Every streamtrain learner is the
same ``dlrm`` (prequential, micro-batches of ``--batch``, row-wise Adagrad, one thread); only
the tables differ, each table given the same bytes:

- ``hashed``: every ID hashes onto ``rows`` rows;
- ``dynamic lru`` / ``dynamic lfu``: admitted IDs own a row of ``capacity``; the rest share
  ``fallback`` hashed rows. The mapping costs 24 bytes a row (three int64 buffers) and the
  admission filter 8 bytes a cell; the capacity is cut until weights + Adagrad state + mapping
  + filter fit the hashed table's bytes.

Samples/s are per CPU second of the process (``time.process_time``, one thread), so other
work on a shared machine moves them less than wall time would. Peers (River FM, Vowpal Wabbit)
run when installed (``make bench`` installs them). The dynamic
run's resident set size is sampled as the stream goes: after the tables fill it stays flat.

    PYTHONPATH=. python bench/ctr_churn.py --samples 60000
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from collections.abc import Callable
from typing import Any

import ctr
import numpy as np
import torch
from ctr import (
    Result,
    Stream,
    _log_loss,
    make_stream,
    run_river_fm,
    run_streamtrain,
    run_table,
    run_vw,
)

from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead


def rss_mib() -> float:
    """The process's resident set size now (Linux ``/proc/self/statm``), MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def dynamic_capacity(rows: int, dim: int, fallback: int, admit_after: int) -> int:
    """The largest capacity whose table fits the bytes of a hashed table of ``rows`` rows:
    weights and Adagrad sums (8 * dim bytes a row), mapping (24 bytes a row), filter cells
    (4 per row, 8 bytes each, when ``admit_after > 1``)."""
    budget = rows * 8 * dim - fallback * 8 * dim
    per_row = 8 * dim + 24 + (32 if admit_after > 1 else 0)
    return budget // per_row


def _dlrm(dim: int, tables: dict[str, Any], rows: int) -> dict[str, object]:
    return {
        "rows": rows,
        "embedding_dim": dim,
        "bottom_sizes": [16],
        "top_sizes": [32],
        "standardize": False,
        "tables": tables,
    }


def _dynamic(args: argparse.Namespace, evict: str, fallback: int) -> dict[str, Any]:
    capacity = dynamic_capacity(args.rows, args.dim, fallback, args.admit_after)
    table = {
        "kind": "dynamic",
        "capacity": capacity,
        "fallback_rows": fallback,
        "admit_after": args.admit_after,
        "evict": evict,
    }
    return {"users": table, "items": table}


def paired_cost(s: Stream, batch: int, named: dict[str, dict[str, object]]) -> dict[str, float]:
    """CPU seconds per learner when they take turns on the same batches (one batch each in
    turn), so load from other work on the machine falls on every learner alike."""
    learners = {}
    for name, params in named.items():
        torch.manual_seed(0)
        model = build_model("dlrm", ctr.ctr().spec, params)
        optimizer = build_optimizer(model.parameters(), "adagrad", 0.05)
        learners[name] = Learner(model, TaskHead(ctr.ctr().spec), optimizer)
    seconds = dict.fromkeys(named, 0.0)
    x, y = torch.from_numpy(s.x), torch.from_numpy(s.y)
    users, items = torch.from_numpy(s.users), torch.from_numpy(s.items)
    ones = torch.ones(batch)
    for lo in range(0, len(s.y) - batch + 1, batch):
        hi = lo + batch
        offsets = torch.arange(batch)
        sparse = {
            "user": JaggedTensor(users[lo:hi], offsets, ones),
            "item": JaggedTensor(items[lo:hi], offsets, ones),
        }
        for name, learner in learners.items():
            started = time.process_time()
            with torch.no_grad():
                learner.model(x[lo:hi], sparse)
            learner.learn(x[lo:hi], y[lo:hi], ones, sparse)
            seconds[name] += time.process_time() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--new-item-every", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1024, help="rows of each hashed table")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--admit-after", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vw-bits", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="streamtrain learners only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctr.CLOCK = time.process_time  # samples per CPU second: steadier on a shared machine
    s = make_stream(args.samples, args.seed, args.users, args.items, args.new_item_every)
    distinct = np.unique(s.users).size, np.unique(s.items).size
    print(
        f"ctr churn: {args.samples} samples, a new item every {args.new_item_every}; "
        f"{distinct[0]} distinct users, {distinct[1]} distinct items; hashed tables of "
        f"{args.rows} rows ({distinct[0] / args.rows:.1f}x / {distinct[1] / args.rows:.1f}x "
        "more distinct IDs than rows)"
    )
    rss: dict[str, list[tuple[int, float]]] = {}

    def sampler(name: str) -> Callable[[int], None]:
        marks = {args.samples * k // 4 for k in (1, 2, 3, 4)}
        rss[name] = []
        batch = args.batch

        def probe(done: int) -> None:
            if any(done - batch < mark <= done for mark in marks):
                rss[name].append((done, rss_mib()))

        return probe

    def streamtrain(name: str, tables: dict[str, Any]) -> Callable[[], Result]:
        def run() -> Result:
            params = _dlrm(args.dim, tables, args.rows)
            result = run_streamtrain("dlrm", params, 0.05, s, args.batch, sampler(name))
            return Result(name, result.probs, result.seconds)

        return run

    small = max(1, args.rows // 8)
    runs: list[Callable[[], Result]] = [
        streamtrain("hashed", {}),
        streamtrain("dynamic lru, fallback 1 row", _dynamic(args, "lru", 1)),
        streamtrain("dynamic lfu, fallback 1 row", _dynamic(args, "lfu", 1)),
        streamtrain(f"dynamic lru, fallback {small} rows", _dynamic(args, "lru", small)),
    ]
    if not args.no_peers and importlib.util.find_spec("river"):
        runs.append(lambda: run_river_fm(s, 8))
    if not args.no_peers and importlib.util.find_spec("vowpalwabbit"):
        runs.append(lambda: run_vw(s, args.vw_bits))
    for fallback in (1, small):
        capacity = dynamic_capacity(args.rows, args.dim, fallback, args.admit_after)
        print(f"dynamic tables, fallback {fallback}: capacity {capacity} rows at equal bytes")
    results = run_table(runs, s)
    hashed = results[0]
    for r in results[1:4]:
        cost = 1 - hashed.seconds / r.seconds
        gain = _log_loss(s.y, hashed.probs) - _log_loss(s.y, r.probs)
        print(f"{r.name}: log loss {gain:+.4f} better than hashed, samples/s cost {cost:.1%}")
    paired = paired_cost(
        s,
        args.batch,
        {
            "hashed": _dlrm(args.dim, {}, args.rows),
            "dynamic lru": _dlrm(args.dim, _dynamic(args, "lru", 1), args.rows),
            "dynamic lfu": _dlrm(args.dim, _dynamic(args, "lfu", 1), args.rows),
        },
    )
    for name in ("dynamic lru", "dynamic lfu"):
        cost = 1 - paired["hashed"] / paired[name]
        print(f"taking turns on every batch: {name} costs {cost:.1%} samples/s against hashed")
    for name, marks in rss.items():
        sizes = ", ".join(f"{done}: {mib:.0f} MiB" for done, mib in marks)
        print(f"RSS of the process during {name} (samples: RSS): {sizes}")


if __name__ == "__main__":
    main()
