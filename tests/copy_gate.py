"""Holding the background snapshot copy (train/snapshot_copy.py) part-way, so a test can train
while a copy is known to be unfinished."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from streamtrain.train.snapshot_copy import SnapshotCopier, _Job


@contextmanager
def copy_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(held, release): the copy thread stops before each chunk once a row-sparse table has
    a chunk copied (``held`` set) until ``release`` is set (set again on exit)."""
    held, release = threading.Event(), threading.Event()
    original = SnapshotCopier._run

    def gated(self: SnapshotCopier, job: _Job, chunks: int | None = None) -> None:
        started = any(b.sparse and b.copied for b in job.tensors)
        if threading.current_thread().name == "snapshot-copy" and started:
            held.set()
            release.wait(60)
        original(self, job, chunks)

    monkeypatch.setattr(SnapshotCopier, "_run", gated)
    try:
        yield held, release
    finally:
        release.set()
