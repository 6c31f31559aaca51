"""Bulk snapshot work at a lower CPU priority than training (issue 26).

A snapshot's pause on the training thread was mostly not its own work: measured per pause
(``bench/pause_trace.py``), the training thread used ~1 ms of CPU in its longest pauses and
spent the rest runnable but not running, while the trainer's publisher thread hashed and sent
a whole model (a process's first snapshot) beside the broker and the servers on the same
cores. Linux shares a contended core evenly among runnable threads of equal priority, so a
thread hashing gigabytes took the core from the training thread for milliseconds at a time.

So the threads that only do bulk work run at a lower priority (``nice`` + ``BULK_NICE``):
the background copy of a whole snapshot (``train/snapshot_copy.py``), the base lane
(``snapshot/lanes.py``) and the writes of whole snapshots on the delta lane
(``snapshot/publisher.py``, on a thread of their own). On a free core they run as fast as
before; on contended cores the training thread runs first. Deltas keep the normal priority,
and so do the Kafka client threads that send them: freshness depends on them. Why whole
threads: an unprivileged thread can raise its nice but never lower it again
(``RLIMIT_NICE``), and a thread starts at the nice of the thread that starts it (a
producer's client threads too).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

# nice +10: a tenth of a nice-0 thread's share of a contended core (Linux's weights 110 vs
# 1024); uncontended, no slower.
BULK_NICE = 10


def lower_thread_priority(increment: int | None = None) -> bool:
    """Raise the calling thread's nice by ``increment`` (default ``BULK_NICE``, capped at
    19), for the rest of its life; False where the platform has no per-thread nice (only
    Linux's ``setpriority`` takes a thread id) or the call failed (logged once per thread).
    Threads it starts afterwards inherit the lower priority."""
    step = BULK_NICE if increment is None else increment
    if step <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + step))
    except OSError as exc:
        log.debug("could not lower the priority of thread %s: %s", threading.current_thread(), exc)
        return False
    return True
