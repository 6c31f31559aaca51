"""Holding the background snapshot copy (train/snapshot_copy.py) part-way, so a test can train
while a copy is known to be unfinished."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import pytest
import torch

from streamtrain.train.row_copy import RowCopy
from streamtrain.train.snapshot_copy import SnapshotCopier
from streamtrain.train.weights import take_snapshot


class CopyingTrainer(Protocol):
    """What the free-running check needs of a test's small trainer."""

    model: torch.nn.Module
    copier: SnapshotCopier

    def train(self, steps: int) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...


def assert_free_running_copies_stay_exact(
    trainer: CopyingTrainer, rounds: int, before: int, during: int
) -> None:
    """Snapshots taken every ``before`` steps, each copied while ``during`` more steps run,
    equal the state at their own step bit for bit; the copier is closed at the end."""
    for _ in range(rounds):
        trainer.train(before)
        at_step = trainer.state()
        taken = take_snapshot(trainer.model, None, trainer.copier)
        trainer.train(during)
        taken.wait_ready()
        for name, tensor in at_step.items():
            assert torch.equal(taken.tensors[name], tensor), name
    trainer.copier.close()


@contextmanager
def copy_gate(
    monkeypatch: pytest.MonkeyPatch, dense: bool = False, thread: str = "snapshot-copy"
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(held, release): the copy thread (a thread whose name starts with ``thread``: the
    publisher's base lane streams its shadow with the same rows, ``snapshot/shadow.py``) stops
    before each chunk of a row-sparse table (of any tensor with ``dense``) after its first
    (``held`` set) until ``release`` is set (set again on exit)."""
    held, release = threading.Event(), threading.Event()
    original = RowCopy.copy_rows

    def gated(self: RowCopy, start: int, stop: int, into: torch.Tensor | None = None) -> None:
        gated_tensor = self.sparse or dense
        copying = threading.current_thread().name.startswith(thread)
        if copying and gated_tensor and start > 0:
            held.set()
            release.wait(60)
        original(self, start, stop, into)

    monkeypatch.setattr(RowCopy, "copy_rows", gated)
    try:
        yield held, release
    finally:
        release.set()
