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
work on a shared machine moves them less than wall time would. The streamtrain learners take
turns on the stream (:func:`taking_turns`: every ``--turn`` batches, one by default), each
timed on its own turns only, so the machine's load, the caches' state and the collector's
passes fall on every learner alike: run one after the other, each learner met a different
minute's load (and in every run seen the later ones ran slower), and the rows swung by up to 30
points between runs. The order of the turns is shuffled each round: a fixed order moved the
cost by 1-3 points (a turn is faster or slower by what ran just before it). That column is the
goal's figure (bench/README.md, "CTR churn"); ``--reverse`` lists the learners the other way
round (other shuffles), as a check that the order moves no figure.
Peers (River FM, Vowpal Wabbit) run after, one after the other, when installed (``make bench``
installs them). The process's resident set size is sampled as the stream goes: after the
tables fill it stays flat.

    PYTHONPATH=. python bench/ctr_churn.py --samples 60000
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import ctr_runs
import numpy as np
import torch
from ctr_runs import (
    Result,
    Stream,
    _log_loss,
    make_stream,
    print_table,
    run_river_fm,
    run_table,
    run_vw,
)

from streamtrain.datasets.ctr import ctr
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
    learners = {name: _learner(params) for name, params in named.items()}
    seconds = dict.fromkeys(named, 0.0)
    for x, y, ones, sparse in whole_batches(s, batch):
        for name, learner in learners.items():
            started = time.process_time()
            with torch.no_grad():
                learner.model(x, sparse)
            learner.learn(x, y, ones, sparse)
            seconds[name] += time.process_time() - started
    return seconds


def whole_batches(
    s: Stream, batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, JaggedTensor]]]:
    """The stream's whole batches in order: features, labels, unit weights, and the user and
    item IDs as one-ID-per-sample jagged features (a last partial batch is left out)."""
    x, y = torch.from_numpy(s.x), torch.from_numpy(s.y)
    users, items = torch.from_numpy(s.users), torch.from_numpy(s.items)
    ones = torch.ones(batch)
    offsets = torch.arange(batch)
    for lo in range(0, len(s.y) - batch + 1, batch):
        hi = lo + batch
        sparse = {
            "user": JaggedTensor(users[lo:hi], offsets, ones),
            "item": JaggedTensor(items[lo:hi], offsets, ones),
        }
        yield x[lo:hi], y[lo:hi], ones, sparse


def _learner(params: dict[str, object]) -> Learner:
    torch.manual_seed(0)  # every learner's dense layers start alike
    model = build_model("dlrm", ctr().spec, params)
    return Learner(
        model, TaskHead(ctr().spec), build_optimizer(model.parameters(), "adagrad", 0.05)
    )


def taking_turns(
    s: Stream,
    batch: int,
    named: dict[str, dict[str, object]],
    turn: int = 1,
    probe: Callable[[int], None] | None = None,
    seed: int = 0,
) -> list[Result]:
    """Every learner of ``named`` through the whole stream prequentially (a batch is predicted,
    then learned), the learners taking turns every ``turn`` batches, in an order shuffled each
    round (``seed``); each one's CPU seconds are those of its own turns. Load from other work
    on the machine, cache pressure and the collector's passes then fall on every learner
    alike, which one learner after another cannot give (each would meet a different minute's
    load). The order is shuffled because a fixed one is not neutral: a learner's turn runs
    faster or slower by what ran just before it (which code and data the caches hold), by 1-3
    points of the cost here. Accuracy is each learner's alone: the order of turns changes no
    prediction. ``probe`` is called after each round with the samples done (outside every
    learner's time)."""
    learners = list({name: _learner(params) for name, params in named.items()}.items())
    shuffle = np.random.default_rng(seed)
    probs = {name: np.zeros(len(s.y)) for name in named}
    seconds = dict.fromkeys(named, 0.0)
    x, y = torch.from_numpy(s.x), torch.from_numpy(s.y)
    users, items = torch.from_numpy(s.users), torch.from_numpy(s.items)
    ones = torch.ones(batch)
    gc.collect()
    gc.freeze()  # what is alive now (the stream, the learners) is no collector's work
    try:
        for first in range(0, len(s.y), turn * batch):
            round_ = []
            for lo in range(first, min(first + turn * batch, len(s.y)), batch):
                hi = min(lo + batch, len(s.y))
                offsets, w = torch.arange(hi - lo), ones[: hi - lo]
                sparse = {
                    "user": JaggedTensor(users[lo:hi], offsets, w),
                    "item": JaggedTensor(items[lo:hi], offsets, w),
                }
                round_.append((lo, hi, w, sparse))
            for at in shuffle.permutation(len(learners)):
                name, learner = learners[at]
                out = probs[name]
                started = time.process_time()
                for lo, hi, w, sparse in round_:
                    with torch.no_grad():
                        out[lo:hi] = torch.sigmoid(learner.model(x[lo:hi], sparse)).numpy()
                    learner.learn(x[lo:hi], y[lo:hi], w, sparse)
                seconds[name] += time.process_time() - started
            if probe is not None:
                probe(round_[-1][1])
    finally:
        gc.unfreeze()
    return [Result(name, probs[name], seconds[name]) for name in named]


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
    parser.add_argument(
        "--turn", type=int, default=1, help="batches each streamtrain learner runs in its turn"
    )
    parser.add_argument(
        "--reverse", action="store_true", help="list the streamtrain learners last first"
    )
    parser.add_argument("--vw-bits", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="streamtrain learners only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctr_runs.CLOCK = time.process_time  # samples per CPU second: steadier on a shared machine
    s = make_stream(args.samples, args.seed, args.users, args.items, args.new_item_every)
    distinct = np.unique(s.users).size, np.unique(s.items).size
    print(
        f"ctr churn: {args.samples} samples, a new item every {args.new_item_every}; "
        f"{distinct[0]} distinct users, {distinct[1]} distinct items; hashed tables of "
        f"{args.rows} rows ({distinct[0] / args.rows:.1f}x / {distinct[1] / args.rows:.1f}x "
        "more distinct IDs than rows)"
    )
    small = max(1, args.rows // 8)
    named = {
        "hashed": _dlrm(args.dim, {}, args.rows),
        "dynamic lru, fallback 1 row": _dlrm(args.dim, _dynamic(args, "lru", 1), args.rows),
        "dynamic lfu, fallback 1 row": _dlrm(args.dim, _dynamic(args, "lfu", 1), args.rows),
        f"dynamic lru, fallback {small} rows": _dlrm(
            args.dim, _dynamic(args, "lru", small), args.rows
        ),
    }
    if args.reverse:
        named = dict(reversed(named.items()))
    for fallback in (1, small):
        capacity = dynamic_capacity(args.rows, args.dim, fallback, args.admit_after)
        print(f"dynamic tables, fallback {fallback}: capacity {capacity} rows at equal bytes")
    marks = {args.samples * k // 4 for k in (1, 2, 3, 4)}
    step = args.turn * args.batch
    rss: list[tuple[int, float]] = []

    def probe(done: int) -> None:
        if any(done - step < mark <= done for mark in marks):
            rss.append((done, rss_mib()))

    print(
        f"streamtrain learners taking turns every {args.turn} batch(es) of {args.batch}, "
        "in an order shuffled each round:"
    )
    results = taking_turns(s, args.batch, named, args.turn, probe, args.seed)
    print_table(results, s)
    peers: list[Callable[[], Result]] = []
    if not args.no_peers and importlib.util.find_spec("river"):
        peers.append(lambda: run_river_fm(s, 8))
    if not args.no_peers and importlib.util.find_spec("vowpalwabbit"):
        peers.append(lambda: run_vw(s, args.vw_bits))
    if peers:
        print("peers, one after the other:")
        run_table(peers, s)
    by_name = {r.name: r for r in results}
    hashed = by_name["hashed"]
    for r in results:
        if r is hashed:
            continue
        cost = 1 - hashed.seconds / r.seconds
        gain = _log_loss(s.y, hashed.probs) - _log_loss(s.y, r.probs)
        print(f"{r.name}: log loss {gain:+.4f} better than hashed, samples/s cost {cost:.1%}")
    sizes = ", ".join(f"{done}: {mib:.0f} MiB" for done, mib in rss)
    print(f"RSS of the process, all {len(named)} learners alive (samples: RSS): {sizes}")


if __name__ == "__main__":
    main()
