"""A digest of what a dynamic table decided: the churn stream replayed prequentially, then a hash
of every weight, mapping buffer and Adagrad state tensor.

A change meant to make the dynamic table's step cheaper without changing any decision must
leave these digests as they were (bench/README.md, "CTR churn": ``lru 75c1e545c28746b0``,
``lfu a095277d5bc79bd4`` for the defaults, on this project's CPU machine). The replay is
``ctr_churn.paired_cost``'s: the ``dlrm`` of ``bench/ctr_churn.py`` with two 711-row dynamic
tables, batches of 64, a no-grad prediction pass before each step. Floating-point results may
differ on another CPU or torch build, so compare digests taken on one machine.

    PYTHONPATH=. python bench/dynamic_digest.py --samples 20000
"""

from __future__ import annotations

import argparse
import hashlib

import torch
from ctr_churn import _dlrm, _dynamic, _learner, make_stream, whole_batches


def digest(evict: str, args: argparse.Namespace) -> str:
    s = make_stream(args.samples, 0, 20_000, 2_000, 4)
    tables = argparse.Namespace(rows=1024, dim=16, admit_after=2)
    learner = _learner(_dlrm(16, _dynamic(tables, evict, 1), 1024))
    for x, y, ones, sparse in whole_batches(s, 64):
        with torch.no_grad():
            learner.model(x, sparse)
        learner.learn(x, y, ones, sparse)
    h = hashlib.sha256()
    for name, value in learner.model.state_dict().items():
        h.update(name.encode())
        h.update(value.numpy().tobytes())
    for state in learner.optimizer.state.values():
        for name, value in state.items():
            h.update(name.encode())
            tensor = isinstance(value, torch.Tensor)
            h.update(value.numpy().tobytes() if tensor else repr(value).encode())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--evict", nargs="+", default=["lru", "lfu"], choices=["lru", "lfu"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for evict in args.evict:
        print(f"{evict} {digest(evict, args)}", flush=True)


if __name__ == "__main__":
    main()
