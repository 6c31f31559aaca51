"""Does a short scheduler slice shorten a training-like thread's waits for a core? (issue 26)

Run: ``.venv/bin/python bench/slice_probe.py [--busy 2] [--wakers 2] [--seconds 40]``

The mechanism of ``sched_slice.py`` alone, without Kafka or a model: this process's
main thread behaves like the bench's training thread (every 50 ms: a 2 ms "step" of CPU, then
a 1 ms "snapshot point"), beside ``--busy`` processes that never sleep and ``--wakers`` that
wake every 5 ms for 2 ms of CPU (like the bench server's probe and the broker), all in this
process's scheduling group. The main thread's slice alternates every second between the
kernel's default and 0.1 ms; per arm it prints the run-queue wait (``/proc``'s schedstat) of
the 1 ms windows, of the 2 ms steps, and how late the thread ran after its sleep.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time

from sched_slice import current_slice_ns, short_slices

_SCHEDSTAT = f"/proc/self/task/{threading.get_native_id()}/schedstat"


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _busy(stop: mp.synchronize.Event) -> None:
    while not stop.is_set():
        _burn(0.05)


def _waker(stop: mp.synchronize.Event) -> None:
    while not stop.is_set():
        time.sleep(0.005)
        _burn(0.002)


def _runq_ns(fd: int) -> int:
    return int(os.pread(fd, 256, 0).split()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--wakers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=40.0)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    workers = [ctx.Process(target=_busy, args=(stop,)) for _ in range(args.busy)]
    workers += [ctx.Process(target=_waker, args=(stop,)) for _ in range(args.wakers)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # let them start
    default = current_slice_ns()
    fd = os.open(_SCHEDSTAT, os.O_RDONLY)
    arms: dict[str, dict[str, list[float]]] = {
        name: {"point": [], "step": [], "late": []} for name in ("default", "0.1 ms")
    }
    started = time.perf_counter()
    tick = started
    while time.perf_counter() - started < args.seconds:
        arm = "0.1 ms" if int(time.perf_counter() - started) % 2 else "default"
        short_slices(100_000 if arm == "0.1 ms" else 0)
        tick += 0.05
        time.sleep(max(0.0, tick - time.perf_counter()))
        arms[arm]["late"].append((time.perf_counter() - tick) * 1e3)
        before = _runq_ns(fd)
        _burn(0.002)
        middle = _runq_ns(fd)
        _burn(0.001)
        after = _runq_ns(fd)
        arms[arm]["step"].append((middle - before) / 1e6)
        arms[arm]["point"].append((after - middle) / 1e6)
    short_slices(0)
    stop.set()
    for worker in workers:
        worker.join(10)
    print(
        f"{args.busy} busy + {args.wakers} waking processes, {args.seconds:g} s, default slice "
        f"{(default or 0) / 1e6:.2f} ms; run-queue ms p50 / p99 / max, and mean"
    )
    for name, series in arms.items():
        line = "; ".join(
            f"{kind} {_pct(v, 0.5):.2f} / {_pct(v, 0.99):.2f} / {max(v):.2f} "
            f"(mean {sum(v) / len(v):.2f})"
            for kind, v in series.items()
        )
        print(f"  slice {name}: {len(series['point'])} windows; {line}")


if __name__ == "__main__":
    main()
