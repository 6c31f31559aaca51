"""The trainer's bulk snapshot threads under ``SCHED_BATCH`` (issue 26).

A snapshot point's pause on the training thread is mostly time spent runnable but not
running (``bench/pause_trace.py``, ``bench/README.md`` Delta snapshots): on two cores shared
with the broker and the servers, a thread that wakes up may take the core from the thread
that is running (Linux's *wakeup preemption*), and the training thread then waits for a core
while its pause is timed. The trainer's own bulk threads wake up often while a whole snapshot
is copied and written: the copy thread (``train/snapshot_copy.py``), the publisher's delta
lane (``snapshot/publisher.py``, woken by every offer) and base lane (``snapshot/lanes.py``),
and the Kafka client threads their producers start.

``SCHED_BATCH`` is Linux's policy for such threads: the same nice, so the same share of a
contended core (lowering the nice was tried and reverted: a niced thread holding the GIL was
descheduled sooner and the training thread waited for it, bench/README.md), but a woken
batch thread never preempts a running thread; it waits for the running one's slice to end.
It needs no privilege, changes only the calling thread, and threads started by it afterwards
inherit it (a producer made on a lane's thread: its client threads are batch threads too).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def batch_scheduling() -> bool:
    """Put the calling thread under ``SCHED_BATCH`` for the rest of its life (its nice kept);
    False where the platform has no such policy (macOS, Windows) or the call failed (logged
    at debug: the thread then runs as before)."""
    policy = getattr(os, "SCHED_BATCH", None)
    setter = getattr(os, "sched_setscheduler", None)
    if policy is None or setter is None:
        return False
    try:
        setter(0, policy, os.sched_param(0))  # pid 0: the calling thread only
    except OSError as exc:
        log.debug("SCHED_BATCH refused for this thread: %s", exc)
        return False
    return True


def is_batch_thread(tid: int = 0) -> bool:
    """Whether thread ``tid`` (0: the calling one) is under ``SCHED_BATCH``."""
    policy = getattr(os, "SCHED_BATCH", None)
    getter = getattr(os, "sched_getscheduler", None)
    return policy is not None and getter is not None and getter(tid) == policy
