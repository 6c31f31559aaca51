"""Accuracy and speed on the ``ctr`` click stream: streamtrain's ``dlrm`` and ``fm`` against
River's factorisation machine and Vowpal Wabbit's hashed logistic regression, in one run.

Every learner sees the same samples in the same order, prequentially: it predicts a sample's
click probability with its current weights, then learns from it (streamtrain in micro-batches
of ``--batch``: the batch is predicted, then one row-wise Adagrad step). Log loss and AUC are
over every prediction (and over the second half, after the tables have warmed up); samples/s
is the predict + learn loop alone, on one thread each (``torch.set_num_threads(1)``), the
stream generated beforehand. Peers get the features in their own idiom: River a dict
``{"user=<id>": 1, "item=<id>": 1, "x0": ..., ...}``, VW a line ``|u <id> |i <id> |d x0:..``
hashed into 2^``--vw-bits`` weights.

    PYTHONPATH=. python bench/ctr.py --samples 60000

The churn mode (an ID universe that keeps growing, hashed vs dynamic tables of equal memory) is
``bench/ctr_churn.py``; ``bench/ctr.py --churn [its options]`` runs it. Both run their learners
with ``bench/ctr_runs.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import ctr_churn
import numpy as np
import torch
from ctr_runs import (
    Result,
    _log_loss,
    make_stream,
    run_river_fm,
    run_streamtrain,
    run_table,
    run_vw,
)

from streamtrain.train.models.embedding import hash_rows


def main() -> None:
    if "--churn" in sys.argv[1:]:
        sys.argv.remove("--churn")
        ctr_churn.main()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--churn", action="store_true", help="run bench/ctr_churn.py instead")
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=1 << 16, help="rows per streamtrain table")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vw-bits", type=int, default=18)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = make_stream(args.samples, args.seed, args.users, args.items)
    distinct = np.unique(s.users).size, np.unique(s.items).size
    shared = [
        1 - np.unique(hash_rows(torch.from_numpy(np.unique(ids)), args.rows).numpy()).size / n
        for ids, n in ((s.users, distinct[0]), (s.items, distinct[1]))
    ]
    print(
        f"ctr: {args.samples} samples, click rate {s.y.mean():.3f}, {distinct[0]} distinct users, "
        f"{distinct[1]} distinct items; {args.rows} rows per table: "
        f"{shared[0]:.1%} of users / {shared[1]:.1%} of items fold onto a row already taken"
    )
    table_params = {"rows": args.rows, "standardize": False}
    runs: list[Callable[[], Result]] = [
        lambda: run_streamtrain(
            "dlrm",
            {**table_params, "embedding_dim": 16, "bottom_sizes": [16], "top_sizes": [32]},
            0.05,
            s,
            args.batch,
        ),
        lambda: run_streamtrain("fm", {**table_params, "embedding_dim": 8}, 0.05, s, args.batch),
        lambda: run_river_fm(s, 8),
        lambda: run_vw(s, args.vw_bits),
    ]
    results = run_table(runs, s)
    river = next(r for r in results if r.name.startswith("River"))
    for r in results:
        if r.name.startswith("streamtrain"):
            print(f"{r.name}: {river.seconds / r.seconds:.1f}x River FM's samples/s")
    base = _log_loss(s.y, np.full(len(s.y), s.y.mean()))
    print(f"(a constant at the overall click rate scores log loss {base:.4f})")


if __name__ == "__main__":
    main()
