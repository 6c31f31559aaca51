"""What the training thread waited for in a snapshot's pause, from ``/proc`` (issue 26).

``bench/delta.py`` times each snapshot point on the training thread (the whole stall of a
delta or a scheduled base). Its wall time splits, per Linux's per-thread accounting, into
- **CPU**: ``time.thread_time_ns`` (user + system: a page fault's or a reclaim's kernel
  time is in it);
- **run-queue wait**: ``/proc/thread-self/schedstat`` field 2, runnable but not running (the
  scheduler gave the core to another thread of this or any process);
- **blocked**: the rest, asleep though it had work: in this process that is the GIL held by
  another thread (CPython hands it over only when its holder releases it, or after
  ``sys.getswitchinterval()`` while it runs Python), a lock, or I/O.
Beside it: the page faults the thread took (``/proc/thread-self/stat``), and the CPU time
every other thread of the process used meanwhile (its ``schedstat``), named by
``threading`` or by the kernel's name for native threads (librdkafka's ``rdk:*``): the thread
that ran while the training thread was blocked is the one that held the GIL.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_TASKS = Path(f"/proc/{os.getpid()}/task")


def _schedstat(tid: int) -> tuple[int, int]:
    """(on-CPU ns, run-queue wait ns) of thread ``tid``; (0, 0) once it is gone."""
    try:
        fields = (_TASKS / str(tid) / "schedstat").read_text().split()
    except OSError:
        return 0, 0
    return int(fields[0]), int(fields[1])


def _names() -> dict[int, str]:
    """Thread id -> name: Python threads by ``threading``, others by the kernel's comm."""
    names: dict[int, str] = {}
    for entry in _TASKS.iterdir():
        try:
            names[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue
    for thread in threading.enumerate():
        if thread.native_id is not None:
            names[thread.native_id] = thread.name
    return names


def _all_threads() -> dict[int, tuple[int, int]]:
    """(on-CPU ns, run-queue wait ns) of every thread of the process."""
    return {int(entry.name): _schedstat(int(entry.name)) for entry in _TASKS.iterdir()}


def _process_cpu_ns(pid: int) -> int:
    """On-CPU ns of process ``pid``, all its threads (0 once it is gone)."""
    total = 0
    try:
        for entry in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((entry / "schedstat").read_text().split()[0])
            except OSError:
                continue
    except OSError:
        return 0
    return total


@dataclass(frozen=True)
class Pause:
    """One timed pause of the training thread: seconds since the epoch and ms."""

    at: float
    stall_ms: float  # the bench's figure (timed inside ``take_snapshot``)
    wall_ms: float  # the bracket's, a little wider
    cpu_ms: float
    runq_ms: float
    minor_faults: int
    major_faults: int
    others_ms: dict[str, float] = field(default_factory=dict)  # other threads' CPU meanwhile
    # other threads' wait for a core meanwhile (over 0.5 ms): a GIL holder that is not
    # running blocks the training thread with no CPU used by any thread of the process
    others_runq_ms: dict[str, float] = field(default_factory=dict)
    processes_ms: dict[str, float] = field(default_factory=dict)  # other processes' CPU
    label: str = ""  # a control window's kind (``run_queue_control``)

    @property
    def blocked_ms(self) -> float:
        return max(0.0, self.wall_ms - self.cpu_ms - self.runq_ms)

    @property
    def stall_off_queue_ms(self) -> float:
        """The stall less the run-queue wait that fell inside it, at most: the bracket is a
        little wider than the stall, so at least ``runq - (wall - stall)`` of the wait was
        inside it. What the training thread spent on the snapshot itself, CPU and GIL."""
        inside = max(0.0, self.runq_ms - max(0.0, self.wall_ms - self.stall_ms))
        return max(0.0, self.stall_ms - inside)

    def line(self, first: float) -> str:
        line = (
            f"+{self.at - first:.1f}s stall {self.stall_ms:.1f} ms; wall {self.wall_ms:.1f} ms "
            f"= CPU {self.cpu_ms:.1f} + run-queue {self.runq_ms:.1f} + blocked "
            f"{self.blocked_ms:.1f}; faults {self.minor_faults}/{self.major_faults} (minor/major)"
        )
        if self.others_ms or self.processes_ms:
            others = ", ".join(f"{name} {ms:.1f}" for name, ms in self.others_ms.items())
            processes = ", ".join(f"{name} {ms:.1f}" for name, ms in self.processes_ms.items())
            line += f"; CPU ms meanwhile, other threads: {others}; processes: {processes}"
        if self.others_runq_ms:
            waits = ", ".join(f"{name} {ms:.1f}" for name, ms in self.others_runq_ms.items())
            line += f"; run-queue ms meanwhile, other threads: {waits}"
        return line


class PauseTrace:
    """Brackets a pause on the calling thread: ``begin()`` before, ``end()`` after it.

    The thread's own counters are read from files opened once (``pread``: a few µs), right
    next to the clocks: a preemption between a counter and a clock would put a wait in one
    and not the other. With ``others`` the other threads' and ``processes``' CPU is read too,
    outside the bracket; that costs the training thread ~1 ms of CPU per pause (dozens of
    ``/proc`` files), which itself makes the scheduler preempt it sooner, so it is off unless
    asked for (``bench/delta.py --trace-others``)."""

    def __init__(self, others: bool = False) -> None:
        self.pauses: list[Pause] = []
        self._with_others = others
        self.processes: dict[str, int] = {}  # name -> pid: their CPU during each pause
        self._processes_at: dict[str, int] = {}
        self._tid = threading.get_native_id()
        self._schedstat = os.open(_TASKS / str(self._tid) / "schedstat", os.O_RDONLY)
        self._stat = os.open(_TASKS / str(self._tid) / "stat", os.O_RDONLY)
        self._start: tuple[float, float, int, int, int, int] | None = None
        self._others: dict[int, tuple[int, int]] = {}

    def _counters(self) -> tuple[int, int, int]:
        """(run-queue wait ns, minor faults, major faults) of the calling thread."""
        runq = int(os.pread(self._schedstat, 256, 0).split()[1])
        fields = os.pread(self._stat, 4096, 0).rsplit(b")", 1)[1].split()
        return runq, int(fields[7]), int(fields[9])

    def begin(self) -> None:
        if self._with_others:  # outside the bracket
            self._others = _all_threads()
            processes = dict(self.processes)  # the replica's is added by another thread
            self._processes_at = {name: _process_cpu_ns(pid) for name, pid in processes.items()}
        runq, minor, major = self._counters()
        self._start = (time.time(), time.perf_counter(), time.thread_time_ns(), runq, minor, major)

    def end(self, stall_s: float, label: str = "") -> Pause:
        """``stall_s``: the figure the bench reports for this pause, kept beside it;
        ``label``: what kind of window it was (a control's, ``run_queue_control``)."""
        wall_end, cpu = time.perf_counter(), time.thread_time_ns()
        runq, minor, major = self._counters()
        assert self._start is not None, "end() without begin()"
        at, wall, cpu0, runq0, minor0, major0 = self._start
        busiest: list[tuple[int, float]] = []
        processes: dict[str, float] = {}
        names: dict[int, str] = {}
        waited: list[tuple[int, float]] = []
        if self._with_others:
            after = _all_threads()
            processes = {
                name: (_process_cpu_ns(pid) - self._processes_at.get(name, 0)) / 1e6
                for name, pid in dict(self.processes).items()
                if name in self._processes_at
            }
            names = _names()
            others = {
                tid: (ns - self._others.get(tid, (0, 0))[0]) / 1e6
                for tid, (ns, _) in after.items()
                if tid != self._tid and ns > self._others.get(tid, (0, 0))[0]
            }
            busiest = sorted(others.items(), key=lambda item: -item[1])[:4]
            others_runq = {
                tid: (wait - self._others.get(tid, (0, 0))[1]) / 1e6
                for tid, (_, wait) in after.items()
                if tid != self._tid
            }
            waited = sorted(
                ((tid, ms) for tid, ms in others_runq.items() if ms > 0.5),
                key=lambda item: -item[1],
            )[:4]
        pause = Pause(
            at=at,
            stall_ms=stall_s * 1e3,
            wall_ms=(wall_end - wall) * 1e3,
            cpu_ms=(cpu - cpu0) / 1e6,
            runq_ms=(runq - runq0) / 1e6,
            minor_faults=minor - minor0,
            major_faults=major - major0,
            others_ms={f"{names.get(tid, '?')}[{tid}]": ms for tid, ms in busiest},
            others_runq_ms={f"{names.get(tid, '?')}[{tid}]": ms for tid, ms in waited},
            processes_ms={name: ms for name, ms in processes.items() if ms > 0},
            label=label,
        )
        self.pauses.append(pause)
        return pause

    def close(self) -> None:
        os.close(self._schedstat)
        os.close(self._stat)

    def longest(self, count: int) -> list[Pause]:
        """The ``count`` pauses with the longest stall (the bench's figure)."""
        return sorted(self.pauses, key=lambda p: -p.stall_ms)[:count]

    def totals(self, start: float = 0.0, end: float = float("inf")) -> str:
        """Stall, wall, CPU, run-queue and blocked ms of the pauses begun in [start, end):
        summed, and the largest of each."""
        inside = [p for p in self.pauses if start <= p.at < end]
        if not inside:
            return "no pauses"
        parts = {
            "stall": [p.stall_ms for p in inside],
            "stall less run-queue": [p.stall_off_queue_ms for p in inside],
            "CPU": [p.cpu_ms for p in inside],
            "run-queue": [p.runq_ms for p in inside],
            "blocked": [p.blocked_ms for p in inside],
        }
        return f"{len(inside)} pauses, ms sum (max): " + ", ".join(
            f"{name} {sum(values):.0f} ({max(values):.1f})" for name, values in parts.items()
        )


def _runq_line(name: str, windows: list[Pause]) -> str:
    if not windows:
        return f"{name}: none"
    walls = sorted(p.wall_ms for p in windows)
    waits = sorted(p.runq_ms for p in windows)
    waited = sum(1 for w in waits if w >= 1.0)
    p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))]
    return (
        f"{name}: {len(windows)} windows, wall p50 {walls[len(walls) // 2]:.1f} ms; run-queue "
        f"{100 * sum(waits) / max(sum(walls), 1e-9):.0f}% of the wall, p50 "
        f"{waits[len(waits) // 2]:.2f} / p99 {p99:.1f} "
        f"/ max {waits[-1]:.1f} ms, {100 * waited / len(windows):.0f}% of windows waited >= 1 ms"
    )


def run_queue_control(points: list[Pause], steps: list[Pause], start: float = 0.0) -> list[str]:
    """Is a snapshot point's run-queue wait its own, or the machine's? The same split for
    ordinary training steps (the control, bracketed the same way), begun at ``start`` or
    later: the snapshot points, the steps right after one (labelled so: the publisher's
    thread works on the offer meanwhile) and the other steps. Equal shares of the wall say
    the waits are ambient (the cores are shared); a larger share in the snapshot points says
    the snapshot point causes them. (Labelled by what came before a step, not after it: a
    long step is more likely to end past the next snapshot's time.)"""
    steps = [p for p in steps if p.at >= start]
    return [
        _runq_line("snapshot points", [p for p in points if p.at >= start]),
        _runq_line("steps after a snapshot point", [p for p in steps if p.label]),
        _runq_line("other steps", [p for p in steps if not p.label]),
    ]
