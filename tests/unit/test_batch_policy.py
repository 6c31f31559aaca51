"""The trainer's bulk snapshot threads run under SCHED_BATCH (``train/batch_policy.py``, issue
26): the publisher's two lanes and the copy thread, and nothing else: the thread that makes
them (the training thread) keeps its policy."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

from streamtrain.kafka import KafkaConnection
from streamtrain.snapshot.mailbox import NewestWinsWorker
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.train.batch_policy import batch_scheduling, is_batch_thread
from streamtrain.train.snapshot_copy import SnapshotCopier

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's (macOS has none)"
)

WAIT = 5.0


def _threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def test_batch_scheduling_changes_the_calling_thread_only() -> None:
    seen: dict[str, bool] = {}

    def worker() -> None:
        seen["set"] = batch_scheduling()
        seen["batch"] = is_batch_thread()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(WAIT)
    assert seen == {"set": True, "batch": True}
    assert not is_batch_thread()  # this thread (and so the process) kept its policy


@pytest.mark.parametrize("batch", [True, False])
def test_a_worker_handles_items_on_a_batch_thread_only_when_asked(batch: bool) -> None:
    seen: list[bool] = []
    worker: NewestWinsWorker[int] = NewestWinsWorker(
        lambda _: seen.append(is_batch_thread()), name="t", batch=batch
    )
    worker.offer(1)
    assert worker.flush(WAIT)
    assert worker.close(WAIT)
    assert seen == [batch]
    assert not is_batch_thread()


def test_the_publishers_lanes_run_as_batch_threads() -> None:
    # no broker is needed: the threads start with the publisher, the producers on first use
    publisher = SnapshotPublisher(
        kafka=KafkaConnection("127.0.0.1:1"),
        topic="batch-policy",
        model_name="m",
        settings_hash="a" * 64,
    )
    try:
        lanes = _threads_named("snapshot-publisher-batch-policy") + _threads_named(
            "snapshot-base-lane-batch-policy"
        )
        assert len(lanes) == 2
        for lane in lanes:  # set on the thread itself as it starts: wait for it
            tid = lane.native_id
            assert tid is not None
            assert _eventually(functools.partial(is_batch_thread, tid)), lane.name
        assert not is_batch_thread()
    finally:
        publisher.close(timeout=1.0)


def test_the_copy_thread_is_a_batch_thread() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    copier = SnapshotCopier(model, torch.optim.SGD(model.parameters(), lr=0.1))
    try:
        copy = copier._thread
        assert copy is not None and copy.native_id is not None
        assert _eventually(lambda: is_batch_thread(copy.native_id or 0))
        assert not is_batch_thread()
    finally:
        copier.close()


def _eventually(check: Callable[[], bool], timeout: float = WAIT) -> bool:
    """``check()`` true within ``timeout`` (the thread sets its policy as it starts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return bool(check())
