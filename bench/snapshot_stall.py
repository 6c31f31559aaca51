"""Where a whole snapshot's training-thread time goes, phase by phase, with no broker.

Run: ``.venv/bin/python bench/snapshot_stall.py --table-gb 1.024 [--repeats 3]``

Trains ``bench/delta.py``'s model (a ``rows x 64`` fp32 ``EmbeddingBag(sparse=True)`` table and
a small dense layer, SGD, Zipf IDs in batches of 500 at 10,000 samples/s) and takes whole
snapshots the way the trainer does (``take_snapshot`` with a ``SnapshotCopier``), training on
while the copy thread copies. Per snapshot it prints the snapshot point (wall and CPU), the
steps that ran during the copy and their pre-step saves (count, sum, longest; each save's wall
and CPU), the copy's length, the stall (the sum, ``streamtrain_snapshot_stall_seconds``) and
the longest single pause. Nothing is published: the memory is the model twice (the table and
its copy) plus the runtime, so 4 GB needs ~9 GB. Issue 26's goal: the stall <= 10 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import sched_slice
from embedding_model import build_id_embedding

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.snapshot_copy import SnapshotCopier
from streamtrain.train.weights import take_snapshot

SPEC = SampleSpec(feature_shape=(9,), task="regression")  # 1 ID + 8 dense features
ROW_BYTES = 64 * 4


class _TimedCopier(SnapshotCopier):
    """Each pre-step hook's wall and CPU time, as the training thread spends it."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.hooks: list[tuple[float, float]] = []
        super().__init__(model, optimizer)

    def _before_step(self, *args: object) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        super()._before_step(*args)
        self.hooks.append((time.perf_counter() - wall, time.thread_time() - cpu))


def _wait(wait_ready: Callable[[], None], done: threading.Event) -> None:
    wait_ready()  # the publisher's side: returns once the copy thread is done
    done.set()


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table-gb", type=float, default=1.024, help="table size, 1e9 bytes")
    parser.add_argument("--repeats", type=int, default=3, help="whole snapshots to take")
    parser.add_argument("--rate", type=float, default=10_000.0, help="samples per second")
    parser.add_argument("--batch", type=int, default=500)
    sched_slice.add_slice_argument(parser)
    args = parser.parse_args()
    if args.table_gb <= 0 or args.repeats < 1 or args.rate <= 0 or args.batch < 1:
        parser.error("--table-gb, --rate > 0 and --repeats, --batch >= 1, please")
    rows = int(args.table_gb * 1e9 / ROW_BYTES)
    torch.manual_seed(0)
    model = build_id_embedding(SPEC, {"rows": rows, "dim": 64, "id_features": 1})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    copier = _TimedCopier(model, optimizer)
    if args.training_slice_us:  # after the copy thread started (sched_slice.py)
        sched_slice.short_slices(int(args.training_slice_us * 1000))
    print(f"table {rows} x 64 fp32 = {rows * ROW_BYTES / 1e9:.2f} GB, {args.rate:g} samples/s")

    def step() -> None:
        ids = (rows ** torch.rand(args.batch)).long() - 1  # log-uniform ranks: Zipf s ~ 1
        x = torch.cat([ids.float().unsqueeze(1), torch.randn(args.batch, 8)], dim=1)
        loss = (model(x).squeeze(-1) - ids.remainder(7).float()).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(20):
        step()
    stalls: list[float] = []
    for repeat in range(args.repeats):
        copier.hooks.clear()
        wall, cpu = time.perf_counter(), time.thread_time()
        taken = take_snapshot(model, None, copier)  # a whole snapshot, as the first one
        point = (time.perf_counter() - wall, time.thread_time() - cpu)
        done = threading.Event()
        waiter = threading.Thread(target=_wait, args=(taken.wait_ready, done), daemon=True)
        waiter.start()
        began, steps = time.perf_counter(), 0
        while not done.is_set():
            due = began + steps * args.batch / args.rate
            time.sleep(max(0.0, due - time.perf_counter()))
            step()
            steps += 1
        copy_s = time.perf_counter() - began
        saves = [wall_s for wall_s, _ in copier.hooks]
        save_cpu = sum(cpu_s for _, cpu_s in copier.hooks)
        stalls.append(taken.stall.seconds)
        print(
            f"snapshot {repeat + 1}: point {_ms(point[0])} (CPU {_ms(point[1])}); copy "
            f"{copy_s:.2f} s, {steps} steps, saves sum {_ms(sum(saves))} (CPU {_ms(save_cpu)}) "
            f"max {_ms(max(saves, default=0.0))}; stall {_ms(taken.stall.seconds)}, "
            f"longest pause {_ms(taken.stall.longest)}"
        )
        waiter.join()  # its reference to the copy dropped, so the copy is freed here (unmapping
        del taken  # a model-sized copy held the kernel's mmap lock for ~0.1 s: not timed)
    print(f"stall median {_ms(statistics.median(stalls))} max {_ms(max(stalls))} (goal <= 10 ms)")
    copier.close()


if __name__ == "__main__":
    main()
