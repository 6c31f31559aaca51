"""``bench/delta.py --rotate-after-replica``: base rotations held until the replica has gone.

The embedded broker keeps every record in memory (Tansu 0.6.0 applies no ``retention.*`` and
cannot delete records: ``bench/broker_retention.py``), so each rotation adds a whole base to
it for the rest of the run. At 4 GB a replica reading one base beside the trainer, the broker
and the tailing server takes the machine to ~22.4 GB, and a second base in the broker takes
it to ~22 GB; both at once (~26.6 GB) do not fit 24 GB. With this option the replica starts
mid-run as ``--replica-at`` says, and the rotations wait for its process to exit: the first
rotation comes as soon as it has, then one every ``--base-every`` s. So one run holds a
replica's start and a base rotation under load, each with no more memory than a run of
either alone.

It works through ``RowTracker``'s clock: a clock that stands still until the gate opens, then
starts one ``--base-every`` period in (a base is due at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

GATE = threading.Event()  # set once the replica's process has exited


def clock(args: Any) -> Callable[[], float]:
    """The rotation clock for ``RowTracker`` (``time.monotonic`` without the option)."""
    if not getattr(args, "rotate_after_replica", False):
        return time.monotonic
    opened: list[float] = []

    def gated() -> float:
        if not GATE.is_set():
            return 0.0  # the first base is taken at 0, and no time passes after it
        if not opened:
            opened.append(time.monotonic())
        return time.monotonic() - opened[0] + args.base_every

    return gated


def open_when_gone(process: Any) -> None:
    """Open the gate once ``process`` (the replica's) has exited and freed its memory."""

    def wait() -> None:
        process.join()
        print(f"  replica exited at {time.time():.3f}: base rotations may start", flush=True)
        GATE.set()

    threading.Thread(target=wait, name="rotation-gate", daemon=True).start()
