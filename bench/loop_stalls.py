"""Where a loaded server's latency spikes come from: its event loop's stalls, each split by what
the loop's thread did meanwhile (bench/serve.py and bench/serve_cpu.py ``--stalls``).

In the server process, :func:`watch` starts a timer on the event loop every millisecond. A
tick that comes more than ``STALL_S`` late is a stall: for it, the loop thread's own readings
over the gap say where the time went, from ``/proc/thread-self/schedstat`` (time on a CPU,
time runnable but waiting for one) and the garbage collector's callbacks:

* **waiting for a CPU**: the thread was runnable and the kernel ran something else (other
  processes on the machine, the load generator, the server's other threads);
* **running**: the loop thread itself was busy (a long callback; of it, **GC**: the cyclic
  garbage collector, which stops every thread while it walks the tracked objects);
* **asleep**: neither: the thread waited for the GIL (another of the server's threads held
  it) or in a blocking system call.

Every garbage collection in the process is also recorded (generation, duration). The server
writes what it has gathered to a JSON file twice a second from a daemon thread; the bench reads
it around each row (:func:`report`). The timer costs the loop ~1,000 callbacks a second
(~1 % of one core at this server's load), so CPU figures of a row run with it are not
comparable to rows without it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

TICK_S = 0.001
STALL_S = 0.003


class _Probe:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._gc_started = 0.0
        self._gc_total_s = 0.0  # every collection so far, whichever thread ran it
        self.collections: list[tuple[float, int, float]] = []  # (time, generation, ms)
        self.stalls: list[tuple[float, float, float, float, float]] = []
        self.runnable_ms = 0.0  # the loop thread's whole wait for a CPU, since the start
        self.tracked = 0  # objects the collector tracks at start-up (a full collection walks them)
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        spent = time.perf_counter() - self._gc_started
        self._gc_total_s += spent
        self.collections.append((time.time(), int(info["generation"]), spent * 1e3))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tick on ``loop`` (call from its thread) and write the records periodically."""
        # Once here, not in the writer: listing them holds the GIL for milliseconds.
        self.tracked = len(gc.get_objects())
        schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)

        def readings() -> tuple[float, float, float, float]:
            on_cpu_ns, waiting_ns = os.pread(schedstat, 64, 0).split()[:2]
            gc_s = self._gc_total_s
            return time.perf_counter(), int(on_cpu_ns) / 1e6, int(waiting_ns) / 1e6, gc_s

        last = readings()
        first_wait = last[2]

        def tick() -> None:
            nonlocal last
            now = readings()
            gap_ms = (now[0] - last[0]) * 1e3
            self.runnable_ms = now[2] - first_wait
            if gap_ms - TICK_S * 1e3 > STALL_S * 1e3:
                running, waiting = now[1] - last[1], now[2] - last[2]
                gc_ms = (now[3] - last[3]) * 1e3
                self.stalls.append((time.time(), gap_ms, waiting, running, gc_ms))
            last = now
            loop.call_later(TICK_S, tick)

        loop.call_later(TICK_S, tick)
        threading.Thread(target=self._write, name="loop-stalls", daemon=True).start()

    def _write(self) -> None:
        while True:
            time.sleep(0.5)
            document = {
                "collections": list(self.collections),
                "stalls": list(self.stalls),
                "runnable_ms": self.runnable_ms,
                "tracked": self.tracked,
            }
            temporary = self._path.with_suffix(".tmp")
            temporary.write_text(json.dumps(document))
            temporary.replace(self._path)


def watch(worker: Any, path: Path) -> None:
    """Record ``worker``'s (a ``ServingWorker``, not yet run) loop stalls into ``path``."""
    probe = _Probe(path)
    server = worker._server  # uvicorn.Server: its loop exists once startup runs
    startup = server.startup

    async def started(*args: Any, **kwargs: Any) -> None:
        probe.start(asyncio.get_running_loop())
        await startup(*args, **kwargs)

    server.startup = started


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def report(path: Path, since: float, until: float, before: dict[str, Any]) -> str:
    """One line on the stalls and collections recorded between the two ``time.time()``
    readings; ``before``: :func:`read` at ``since`` (for the thread's wait for a CPU)."""
    after = read(path)
    if not after:
        return "stalls: nothing recorded (is the server running with the probe?)"
    stalls = [s for s in after["stalls"] if since <= s[0] <= until]
    collections = [c for c in after["collections"] if since <= c[0] <= until]
    runnable = after["runnable_ms"] - before.get("runnable_ms", 0.0)
    gaps = sum(s[1] for s in stalls)
    waiting, running, gc_ms = (sum(s[i] for s in stalls) for i in (2, 3, 4))
    asleep = max(0.0, gaps - waiting - running)
    by_generation: dict[int, list[float]] = {}
    for _, generation, ms in collections:
        by_generation.setdefault(generation, []).append(ms)
    gcs = ", ".join(
        f"gen {g}: {len(ms)} (max {max(ms):.1f} ms)" for g, ms in sorted(by_generation.items())
    )
    worst = max((s[1] for s in stalls), default=0.0)
    return (
        f"loop stalls > {STALL_S * 1e3:.0f} ms: {len(stalls)}, worst {worst:.1f} ms, "
        f"{gaps:.0f} ms in all: waiting for a CPU {waiting:.0f}, running {running:.0f} "
        f"(GC {gc_ms:.1f}), asleep {asleep:.0f}; loop thread runnable-waiting {runnable:.0f} ms "
        f"over the row; collections: {gcs or 'none'} ({after['tracked']:,} objects tracked)"
    )
