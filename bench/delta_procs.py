"""Per-process CPU and memory of a ``bench/delta.py`` run, sampled from ``/proc`` (issue 26).

The run's processes (the trainer, which also holds the publisher; the embedded broker; the
tailing server; the replica once started) share one machine: a sampler thread in the trainer
reads each one's CPU seconds (user + system, all threads) and VmRSS / VmHWM every 0.2 s, so
a run can say which process used the cores while freshness climbed, and how much memory each
one peaked at (the figures a larger table's memory is projected from).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from delta_pressure import PressureWatch
from proc_cpu import process_cpu_s

_TICK = os.sysconf("SC_CLK_TCK")

PERIOD_S = 0.2


def status_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes; (0, 0) once it is gone."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in values:
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the machine so far, all CPUs (``/proc/stat``: busy is
    user + nice + system + irq + softirq + steal, in 10 ms ticks)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICK, steal / _TICK


class ProcessWatch:
    """Samples named processes until ``stop``; ``add`` names one started later."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = dict(pids)
        self._lock = threading.Lock()
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.rss: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self.pressure = PressureWatch()  # the machine's PSI, MemAvailable, run-queue waits
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-watch", daemon=True)

    def start(self) -> ProcessWatch:
        self._thread.start()
        return self

    def add(self, name: str, pid: int) -> None:
        with self._lock:
            self._pids[name] = pid
            self.samples.setdefault(name, [])
            self.peak.setdefault(name, 0)
            self.rss.setdefault(name, [])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(PERIOD_S):
            self.sample()

    def sample(self) -> None:
        """One reading of every process (also called by the run before a process exits),
        and of the whole machine: every CPU's busy time, other helpers' and the hypervisor's
        (steal) included, so a phase's cores show what the run's processes did not use."""
        now = time.time()
        busy, steal = machine_cpu_s()
        with self._lock:
            self.samples.setdefault("machine", []).append((now, busy))
            self.samples.setdefault("machine steal", []).append((now, steal))
        with self._lock:
            pids = dict(self._pids)
        self.pressure.sample(now, pids)
        for name, pid in pids.items():
            try:
                cpu = process_cpu_s(pid)
            except (OSError, IndexError):
                continue  # exited
            rss, hwm = status_bytes(pid)
            with self._lock:
                self.samples[name].append((now, cpu))
                self.rss[name].append((now, rss))
                self.peak[name] = max(self.peak[name], hwm)

    def rss_profile(self, name: str, start: float, step_s: float) -> list[float]:
        """``name``'s largest sampled VmRSS (GB) in each ``step_s`` from ``start``: when in
        the run a process's memory peaked (the first snapshot, a base's write, a replica)."""
        bins: dict[int, int] = {}
        for t, rss in self.rss.get(name, []):
            index = int((t - start) // step_s)
            bins[index] = max(bins.get(index, 0), rss)
        return [bins.get(i, 0) / 1e9 for i in range(max(bins, default=-1) + 1)]

    def cpu_between(self, name: str, start: float, end: float) -> float:
        """CPU seconds ``name`` used between two wall times (the nearest samples inside)."""
        inside = [cpu for t, cpu in self.samples.get(name, []) if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) >= 2 else float("nan")

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Each process's average cores in use (CPU s per wall s) between two wall times."""
        span = max(end - start, 1e-9)
        return {name: self.cpu_between(name, start, end) / span for name in self.samples}
