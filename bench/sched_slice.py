"""A thread's own scheduler slice (Linux >= 6.12, ``sched_setattr``): tried for the
training thread in issue 26 and not kept; the benches' ``--training-slice-us`` and
``bench/slice_probe.py`` use it.

Linux's scheduler (EEVDF) runs, among the threads that have not had their share, the one
whose slice ends first, and a thread may ask for its own slice length (``sched_runtime``,
0.1-100 ms; unprivileged: it changes when a thread runs, not its share). The idea was that a
training thread with the least slice would be run first after a preemption and wait less
for a core inside a snapshot point. Measured (bench/README.md, Delta snapshots,
``stall26j``): a 1 ms window right after a 2 ms burst did wait less, but the burst itself
waited more (a thread with 0.1 ms slices is preempted sooner within it), and the whole
snapshots of ``bench/snapshot_stall.py`` stalled longer at load ~1 (3.4-4.3 against
1.7-3.4 ms median), the copy thread taking the core from the training thread's saves.
Only the calling thread changes; older kernels ignore a normal thread's slice.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import platform
import sys

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


def add_slice_argument(parser: argparse.ArgumentParser) -> None:
    """The benches' ``--training-slice-us`` (microseconds; 0: the kernel's default)."""
    parser.add_argument(
        "--training-slice-us",
        type=float,
        default=0.0,
        help="the training thread's scheduler slice (bench/sched_slice.py: tried, not kept "
        "in the trainer); 0: the kernel's default, as the trainer runs",
    )
