"""TorchRec's ``MCHManagedCollisionModule`` against ``DynamicMapping`` on the churn stream.

Not part of ``make bench``: it needs ``fbgemm-gpu-cpu==1.8.0`` and ``torchrec==1.8.0 --no-deps``
(``../shared/SPARSE_NOTES.md``), which the project does not install. It measures, at equal
capacity on the ``ctr`` churn stream's item IDs (batches of 64, one thread):

- remapping cost per step (CPU seconds, the two taking turns on every batch): MCH's
  ``forward`` (profile + remap, ``eviction_interval`` steps between evictions) vs our
  ``observe`` + ``rows``;
- replay: a module rebuilt from a ``state_dict`` taken mid-stream continues the stream; are its
  remapped IDs and state bit-identical to the uninterrupted module's?

    PYTHONPATH=.:bench python bench/mch_probe.py --samples 20000
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import ctr_runs
import torch
from torchrec.modules.mc_modules import (
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    MCHManagedCollisionModule,
)
from torchrec.sparse.jagged_tensor import JaggedTensor

from streamtrain.train.models.dynamic_table import DynamicMapping
from streamtrain.train.models.sparse_params import TableSettings


def _mch(capacity: int, evict: str, interval: int) -> MCHManagedCollisionModule:
    policy = LRU_EvictionPolicy() if evict == "lru" else LFU_EvictionPolicy()
    module = MCHManagedCollisionModule(
        zch_size=capacity,
        device=torch.device("cpu"),
        eviction_policy=policy,
        eviction_interval=interval,
        input_hash_size=2**40,
    )
    return module.train()


def _remap(module: MCHManagedCollisionModule, ids: torch.Tensor) -> torch.Tensor:
    features = {
        "item": JaggedTensor(values=ids, lengths=torch.ones(ids.numel(), dtype=torch.int32))
    }
    return module(features)["item"].values()


def _replays(batches: list[torch.Tensor], capacity: int, evict: str, interval: int) -> bool:
    """Whether a copy restored from a mid-stream state_dict continues bit-identically."""
    whole = _mch(capacity, evict, interval)
    cut = len(batches) // 2 + interval // 2  # mid-interval when interval > 1
    for ids in batches[:cut]:
        _remap(whole, ids)
    restored = _mch(capacity, evict, interval)
    restored.load_state_dict({k: v.clone() for k, v in whole.state_dict().items()})
    same = True
    for ids in batches[cut:]:
        same &= torch.equal(_remap(whole, ids), _remap(restored, ids))
    for (name, a), b in zip(
        whole.state_dict().items(), restored.state_dict().values(), strict=True
    ):
        if not torch.equal(a, b):
            print(f"  state {name} differs after the replay")
            same = False
    return bool(same)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--capacity", type=int, default=711)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = ctr_runs.make_stream(args.samples, 0, 20_000, 2_000, 4)
    items = torch.from_numpy(s.items)
    batches = [
        items[lo : lo + args.batch] for lo in range(0, len(items) - args.batch + 1, args.batch)
    ]
    print(f"{len(batches)} batches of {args.batch} item IDs, capacity {args.capacity}")
    for evict in ("lru", "lfu"):
        for interval in (1, 10):
            mch = _mch(args.capacity, evict, interval)
            ours = DynamicMapping(
                TableSettings(kind="dynamic", capacity=args.capacity, evict=evict)
            )
            spent: dict[str, Any] = {"mch": 0.0, "ours": 0.0}
            for ids in batches:
                t = time.process_time()
                _remap(mch, ids)
                spent["mch"] += time.process_time() - t
                t = time.process_time()
                ours.observe(ids)
                ours.rows(ids)
                spent["ours"] += time.process_time() - t
            per = {k: v / len(batches) * 1e6 for k, v in spent.items()}
            replay = _replays(batches, args.capacity, evict, interval)
            print(
                f"{evict}, eviction_interval {interval}: MCH {per['mch']:.0f} us/step, "
                f"DynamicMapping {per['ours']:.0f} us/step; MCH replays bit-identically "
                f"from a state_dict: {replay}"
            )


if __name__ == "__main__":
    main()
