"""A short GIL switch interval while a whole snapshot is written (issue 26).

What the training thread waited for in its longest snapshot pauses, measured per pause
(``bench/pause_trace.py``, ``bench/README.md`` Delta snapshots): ~1 ms of its own CPU, the
rest runnable but not running (the kernel gave the cores to the broker and the servers), and
while the trainer wrote a whole snapshot, **blocked**: waiting for the GIL, in steps of the
switch interval (4.7, 5.1, 5.7, 5.8, 15.9 ms). A writer thread hashing and sending a model
releases the GIL for each chunk's hash and takes it back right after; a training thread that
asked for it meanwhile is woken but, on busy cores, not run before the writer has it again, so
it waits for CPython's forced switch, ``sys.getswitchinterval()`` (5 ms by default), and again
if the switch did not reach it (the convoy effect of CPython's GIL, bpo-7946).

So while a whole snapshot is written (the delta lane's first snapshot of a process or a
dense model's, the base lane's bases: ``lanes.write_counted``) the switch interval is
``HANDOFF_S``; deltas are written without it. The interval is the interpreter's, for every
thread: the cost is more GIL hand-offs between threads that all run Python meanwhile, only
for the length of those writes. Overlapping writes (both lanes) share one change, undone when
the last ends; the interval as it was before the first is put back (a change made meanwhile
by someone else is undone with it).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

# 0.5 ms: a tenth of CPython's default. At 2 GB (three loaded runs a side) the training
# thread's longest GIL wait during the first base was 1.8-4.0 ms, against 0.9-15.9 ms at 5 ms.
HANDOFF_S = 0.0005


class _SwitchInterval:
    """The process's switch interval, shortened while at least one holder is inside."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._saved = 0.0

    @contextmanager
    def shortened(self, interval_s: float) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, interval_s))
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    sys.setswitchinterval(self._saved)


_INTERVAL = _SwitchInterval()


def short_switch_interval(interval_s: float = HANDOFF_S) -> AbstractContextManager[None]:
    """While inside, the GIL's switch interval is at most ``interval_s``."""
    return _INTERVAL.shortened(interval_s)
