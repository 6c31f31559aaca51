"""Memory and CPU pressure through a ``bench/delta.py`` run, from ``/proc`` (issue 26).

Which of three things delays the tailing server while a new replica reads its base: the
broker serving the replica's large fetches, memory reclaim near the machine's limit, or the
server's threads waiting for a core. Sampled with the run's per-process readings
(``delta_procs.ProcessWatch``, every 0.2 s):

- **PSI** (``/proc/pressure/{memory,cpu,io}``, pressure stall information): the ``total``
  counters, microseconds in which *some* runnable task (``full``: every one) was stalled on
  that resource. A phase's share is Δtotal ÷ Δwall (a percentage of wall time, as the
  kernel's own ``avg10``, but over exactly the phase). Memory ``some`` > 0 means tasks waited
  in direct reclaim or on refaults: reclaim stalls.
- **MemAvailable** (``/proc/meminfo``): the kernel's estimate of memory a new allocation gets
  without swapping; its minimum per phase.
- **Run-queue wait** per process: the sum over its threads of ``schedstat`` field 2 (runnable
  but not on a CPU), per wall second (the average number of its threads waiting for a core):
  the server's (its Kafka client's fetch thread included) says whether it was starved of CPU.
"""

from __future__ import annotations

import threading
from pathlib import Path

_PSI = ("memory", "cpu", "io")


def _psi_totals() -> dict[str, int]:
    """``{"memory some": us, "memory full": us, ...}`` since boot; {} without PSI."""
    totals: dict[str, int] = {}
    for resource in _PSI:
        try:
            text = Path(f"/proc/pressure/{resource}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            kind, *fields = line.split()
            for field in fields:
                if field.startswith("total="):
                    totals[f"{resource} {kind}"] = int(field[len("total=") :])
    return totals


def mem_available() -> int:
    """MemAvailable in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run_queue_ns(pid: int) -> int:
    """Run-queue wait of every live thread of ``pid`` so far, ns (0 once it is gone)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError):
            continue
    return total


class PressureWatch:
    """PSI totals, MemAvailable and per-process run-queue wait, sampled by ``sample``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.psi: list[tuple[float, dict[str, int]]] = []
        self.available: list[tuple[float, int]] = []
        self.runq: dict[str, list[tuple[float, int]]] = {}

    def sample(self, now: float, pids: dict[str, int]) -> None:
        psi, available = _psi_totals(), mem_available()
        waits = {name: run_queue_ns(pid) for name, pid in pids.items()}
        with self._lock:
            self.psi.append((now, psi))
            self.available.append((now, available))
            for name, ns in waits.items():
                if ns:
                    self.runq.setdefault(name, []).append((now, ns))

    def window(self, start: float, end: float) -> dict[str, float]:
        """Between two wall times (the samples inside): each PSI counter's share of the wall
        time (%), the lowest MemAvailable (GB), each process's run-queue wait per wall s."""
        with self._lock:
            psi = [(t, v) for t, v in self.psi if start <= t <= end]
            available = [v for t, v in self.available if start <= t <= end]
            runq = {n: [(t, v) for t, v in s if start <= t <= end] for n, s in self.runq.items()}
        out: dict[str, float] = {}
        if len(psi) >= 2:
            (t0, first), (t1, last) = psi[0], psi[-1]
            for key in last:
                if key in first:
                    out[f"{key} %"] = (last[key] - first[key]) / 1e4 / max(t1 - t0, 1e-9)
        if available:
            out["MemAvailable min GB"] = min(available) / 1e9
        for name, series in runq.items():
            if len(series) >= 2:
                span = max(series[-1][0] - series[0][0], 1e-9)
                # a thread that exits takes its count along: at least 0
                out[f"runq {name}"] = max(0.0, series[-1][1] - series[0][1]) / 1e9 / span
        return out


def _line(values: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {v:.2f}" if "GB" in k or k.startswith("runq") else f"{k} {v:.1f}"
        for k, v in values.items()
        if k != "cpu full %"  # always 0 at the machine's level (the kernel's docs)
    )


def print_pressure(
    watch: PressureWatch,
    first: float,
    replica: tuple[float, float] | None,
    worst: list[tuple[float, float]],
) -> None:
    """Per phase of the run (before the replica, its start to ready, after; or the whole
    run), then over each of the worst batches' wait (its production to its first serving:
    ``(freshness, s after the first prediction)``)."""
    phases: dict[str, tuple[float, float]] = {}
    if replica is not None:
        start, ready = replica
        phases["the first base (10 s before the first prediction)"] = (first - 10, first)
        phases["first prediction to replica start"] = (first, start)
        phases["replica start to ready"] = (start, ready)
        phases["after ready"] = (ready, float("inf"))
    else:
        phases["the first base (10 s before the first prediction)"] = (first - 10, first)
        phases["after the first prediction"] = (first, float("inf"))
    print("  pressure (PSI % of wall time, MemAvailable min, run-queue wait per wall s):")
    for label, (a, b) in phases.items():
        if b > a:  # a replica started before the first prediction has no phase before it
            print(f"    {label}: {_line(watch.window(a, b))}")
    for fresh, at in worst:
        produced = first + at
        # a window at least 1 s wide: the samples are 0.2 s apart
        window = watch.window(produced - 0.5, produced + max(fresh, 0.5) + 0.5)
        print(f"    batch +{at:.1f}s fresh {fresh:.2f}s: {_line(window)}")
