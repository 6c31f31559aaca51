"""The training thread's short scheduler slices (``train/short_slice.py``, issue 26): asked for
on the calling thread only, its policy and nice kept, the kernel's default back with 0."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import pytest

from streamtrain.train.batch_policy import batch_scheduling
from streamtrain.train.short_slice import (
    SLICE_NS,
    current_slice_ns,
    short_slices,
    training_slices,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or current_slice_ns() is None,
    reason="sched_setattr is Linux's",
)


def _on_a_thread(work: Callable[[], dict[str, object]]) -> dict[str, object]:
    """``work()`` on a thread of its own (the test's thread keeps its scheduling)."""
    out: dict[str, object] = {}
    thread = threading.Thread(target=lambda: out.update(work()))
    thread.start()
    thread.join(10.0)
    assert not thread.is_alive()
    return out


def test_the_calling_thread_gets_the_slice_its_nice_and_policy_kept() -> None:
    default = current_slice_ns()

    def work() -> dict[str, object]:
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + 1)  # this thread
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        asked = short_slices()
        return {
            "asked": asked,
            "slice": current_slice_ns(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0) == nice,
            "policy": os.sched_getscheduler(0) == os.SCHED_OTHER,
            "back": short_slices(0) and current_slice_ns() == default,
        }

    out = _on_a_thread(work)
    if out["slice"] == default:
        pytest.skip("this kernel keeps its own slice for normal threads (Linux < 6.12)")
    assert out == {"asked": True, "slice": SLICE_NS, "nice": True, "policy": True, "back": True}
    assert current_slice_ns() == default  # the test's own thread was not changed


def test_a_batch_thread_stays_a_batch_thread() -> None:
    def work() -> dict[str, object]:
        batch_scheduling()
        return {"asked": short_slices(), "policy": os.sched_getscheduler(0)}

    assert _on_a_thread(work) == {"asked": True, "policy": os.SCHED_BATCH}


def test_inside_training_slices_the_slice_is_short_and_after_it_is_put_back() -> None:
    def work() -> dict[str, object]:
        before = current_slice_ns()
        with training_slices():
            inside = current_slice_ns()
        return {"inside": inside, "after": current_slice_ns() == before, "before": before}

    out = _on_a_thread(work)
    if out["inside"] == out["before"]:
        pytest.skip("this kernel keeps its own slice for normal threads (Linux < 6.12)")
    assert out["inside"] == SLICE_NS and out["after"] is True
