"""Bulk snapshot work at a lower CPU priority than training (``streamtrain/thread_priority.py``,
issue 26): a lowered thread's nice is raised by ``BULK_NICE`` (capped at 19) for good, the
thread that lowered nothing keeps its own, threads it starts inherit it, and the snapshot
copier's thread is lowered while the training thread is not.

Per-thread nice is Linux's. A process already at nice 19 (``nice -n 19 make test``) has no
lower priority to give, so there the expected nice equals the starting one; the threads'
identities are checked either way."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import pytest
import torch

from streamtrain.thread_priority import BULK_NICE, lower_thread_priority
from streamtrain.train.snapshot_copy import SnapshotCopier

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice is Linux's"
)


def _nice(native_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, native_id)


def _in_thread(work: Callable[[], object]) -> list[object]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(work()))
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return out


def test_a_lowered_thread_and_the_threads_it_starts_keep_the_bulk_nice() -> None:
    own = _nice(threading.get_native_id())
    lowered = min(19, own + BULK_NICE)

    def lower_then_start_one() -> tuple[bool, int, int]:
        done = lower_thread_priority()
        child = _in_thread(lambda: _nice(threading.get_native_id()))
        return done, _nice(threading.get_native_id()), int(child[0])  # type: ignore[call-overload]

    [(done, nice, child)] = _in_thread(lower_then_start_one)  # type: ignore[misc]
    assert (done, nice, child) == (True, lowered, lowered)
    assert _nice(threading.get_native_id()) == own  # the caller's thread is not touched


def test_no_increment_changes_nothing() -> None:
    own = _nice(threading.get_native_id())
    [(done, nice)] = _in_thread(  # type: ignore[misc]
        lambda: (lower_thread_priority(0), _nice(threading.get_native_id()))
    )
    assert (done, nice) == (False, own)


def test_the_snapshot_copy_thread_runs_at_the_bulk_nice_and_training_does_not() -> None:
    own = _nice(threading.get_native_id())
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    before = set(threading.enumerate())
    copier = SnapshotCopier(model, torch.optim.SGD(model.parameters(), lr=0.1))
    try:
        [thread] = [t for t in set(threading.enumerate()) - before if t.name == "snapshot-copy"]
        assert thread.native_id is not None
        deadline = time.monotonic() + 30  # the thread lowers itself as it starts
        while _nice(thread.native_id) != min(19, own + BULK_NICE) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _nice(thread.native_id) == min(19, own + BULK_NICE)
        assert _nice(threading.get_native_id()) == own
    finally:
        copier.close()
