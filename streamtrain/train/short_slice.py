"""The training thread asks Linux's scheduler for short slices (issue 26).

A snapshot point's pause was mostly the training thread runnable but not running: 7 of the
11 ms of the quiet 1 GB dynamic run's longest pause, 9.5 of 12 ms at 4 GB, with the broker,
the server and a replica on the same two cores (``bench/pause_trace.py``). Ordinary steps
wait for a core as often (the bench's control), so the waits are the machine's, not the
snapshot's: any thread that runs for a millisecond there waits for one now and then.

Linux's scheduler since 6.6 (EEVDF) runs, among the threads that have not had their share,
the one whose slice ends first, and since 6.12 a thread may ask for its own slice length
(``sched_setattr``'s ``sched_runtime``, 0.1-100 ms; unprivileged: it changes when a thread
runs, not its share). The training thread uses a small part of a core (a step and sometimes a
snapshot point, then it waits for the next batch), so it nearly always has share left; with a
0.1 ms slice (the least) its deadline is the earliest, and it is run first when it wakes or
is preempted, and a woken thread with a later deadline does not preempt it. Its share of
the machine stays what it was: a thread that runs longer than its share waits as before.

Only the calling thread changes; threads it starts afterwards may inherit the slice, so the
trainer asks for it after its helper threads exist (``loop.py``). Older kernels ignore the
slice of a normal thread; other systems have no call for it (``short_slices`` says False).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

SLICE_NS = 100_000  # the kernel's least: 0.1 ms
# sched_setattr's and sched_getattr's numbers by architecture (Linux's syscall tables)
_SETATTR = {"x86_64": 314, "aarch64": 274}
_GETATTR = {"x86_64": 315, "aarch64": 275}


class _SchedAttr(ctypes.Structure):
    """``struct sched_attr``, its first version (48 bytes)."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


def short_slices(slice_ns: int = SLICE_NS) -> bool:
    """Ask for ``slice_ns`` slices for the calling thread (policy and nice kept; 0: the
    kernel's default again). False where there is no such call or it failed (logged at
    debug: the thread is scheduled as before)."""
    number = _SETATTR.get(platform.machine())
    if not sys.platform.startswith("linux") or number is None:
        return False
    try:
        policy = os.sched_getscheduler(0)
        if policy not in (os.SCHED_OTHER, os.SCHED_BATCH):
            return False  # a real-time or idle thread: left as it is
        attr = _SchedAttr(
            size=ctypes.sizeof(_SchedAttr),
            sched_policy=policy,
            sched_nice=os.getpriority(os.PRIO_PROCESS, 0),  # the calling thread's own nice
            sched_runtime=slice_ns,
        )
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(number, 0, ctypes.byref(attr), 0) != 0:
            log.debug("sched_setattr refused a %d ns slice: errno %d", slice_ns, ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:
        log.debug("no short slices for this thread: %s", exc)
        return False
    return True


def current_slice_ns() -> int | None:
    """The calling thread's slice as the kernel reports it (None: no such call here)."""
    number = _GETATTR.get(platform.machine())
    if not sys.platform.startswith("linux") or number is None:
        return None
    attr = _SchedAttr()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 0, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return None
    return int(attr.sched_runtime)


@contextmanager
def training_slices(slice_ns: int = SLICE_NS) -> Iterator[None]:
    """``short_slices`` for the calling thread while inside; the slice it had is put back
    after (a caller's thread, a test's, goes on as it was)."""
    before = current_slice_ns()
    changed = short_slices(slice_ns)
    try:
        yield
    finally:
        if changed and before is not None:
            short_slices(before)
