"""A single-slot, newest-wins mailbox served by one background thread.

Snapshots are only worth publishing while they are the newest: when the worker is busy and a
second item is already waiting, a third replaces the second (which is reported as superseded).
Memory is bounded by one pending item plus the one in progress; ``offer`` never waits.

Example:
    >>> done = []
    >>> worker = NewestWinsWorker(done.append, name="demo")
    >>> worker.offer(1)
    >>> worker.flush(5.0)
    True
    >>> worker.close(5.0)
    True
    >>> done
    [1]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from streamtrain.train.batch_policy import batch_scheduling

T = TypeVar("T")
log = logging.getLogger(__name__)


class NewestWinsWorker(Generic[T]):
    """Hands each offered item to ``handle`` on a daemon thread, newest first, none queued.

    Invariants, in the order the worker relies on them:

    1. Every offer gets a sequence number; the slot holds at most one pending item.
    2. An offer while an item is pending replaces it and calls ``on_superseded(old)``.
    3. The worker takes the pending item, runs ``handle`` outside the lock, then marks every
       sequence number up to the item's as settled, so ``flush`` counts superseded items as done.
    4. ``handle`` raising is logged and settles the item: one failure never stops the thread.
    5. ``close`` lets the worker finish the pending item, then the thread exits.

    With ``batch`` the thread runs under ``SCHED_BATCH`` (``train/batch_policy.py``): woken
    by an offer, it never preempts the thread that offered (the trainer's lanes). ``on_start``
    runs on the thread before the first item (items offered meanwhile wait for it): the base
    lane opens its producer there, when the thread starts, not at the first base
    (``lanes.py``).
    """

    def __init__(
        self,
        handle: Callable[[T], None],
        *,
        name: str,
        on_superseded: Callable[[T], None] = lambda item: None,
        batch: bool = False,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self._handle = handle
        self._on_start = on_start  # run first on the thread (a failure is logged, not raised)
        self._batch = batch  # the thread under SCHED_BATCH (train/batch_policy.py)
        self._on_superseded = on_superseded
        self._cond = threading.Condition()
        self._pending: tuple[int, T] | None = None
        self._offered = 0
        self._settled = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def offer(self, item: T) -> None:
        """Put ``item`` in the slot without waiting; raises RuntimeError after ``close``."""
        with self._cond:
            if self._closing:
                raise RuntimeError("offer() after close(): the worker no longer takes items")
            self._offered += 1
            replaced, self._pending = self._pending, (self._offered, item)
            self._cond.notify_all()
        if replaced is not None:
            self._on_superseded(replaced[1])

    def flush(self, timeout: float) -> bool:
        """Wait until every item offered so far was handled or superseded; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._offered
            while self._settled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout: float) -> bool:
        """Handle the pending item (if any), stop the thread; False if it outlived ``timeout``."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        if self._batch:
            batch_scheduling()
        if self._on_start is not None:
            try:
                self._on_start()
            except Exception:
                log.exception("background start of %s failed", self._thread.name)
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                if self._pending is None:
                    return
                (seq, item), self._pending = self._pending, None
            try:
                self._handle(item)
            except Exception:
                log.exception("background handler %s failed", self._thread.name)
            finally:
                with self._cond:
                    self._settled = seq
                    self._cond.notify_all()
