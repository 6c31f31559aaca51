"""Seams the trainer loop calls out through; implementations live in other packages."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch


class CopySpoiled(RuntimeError):
    """Raised by a request's ``wait_ready``: the weights changed outside an optimizer step
    before the background copy had them (``train/snapshot_copy.py`` rule 4). The request
    cannot be published; the trainer's next snapshot is a whole one."""


@dataclass(frozen=True)
class SnapshotRequest:
    """Weights the trainer hands to a snapshot sink, already copied off the training tensors.

    ``wait_ready`` blocks until the copies are complete (a CUDA event on a side stream, a
    background copy of a CPU model, ``snapshot_copy.py``) and raises ``CopySpoiled`` when
    the copy could not be completed; the sink calls it on its own thread so the training
    thread never waits for the copy.
    """

    version: int  # the trainer step the weights were taken at
    run_id: str
    tensors: Mapping[str, torch.Tensor]  # CPU tensors the sink may keep
    data_watermark: float | None  # newest sample timestamp learned from (epoch seconds)
    offsets: Mapping[int, int]  # partition -> next offset the weights have not learned from
    created_at: float  # epoch seconds
    wait_ready: Callable[[], None] = field(default=lambda: None)
    # None: a base (every tensor whole). Otherwise a delta: for each name here, ``tensors[name]``
    # holds only the rows at these int64 indices (see ``streamtrain.snapshot.delta``).
    rows: Mapping[str, torch.Tensor] | None = None
    # With ``rows``: a base all the same, which the sink completes from its own copy of the
    # weights at its previous snapshot (``snapshot/shadow.py``): the training thread copied
    # only the rows, not the table.
    complete: bool = False
    # Tensors of a whole snapshot whose bytes the writer reads piece by piece as it sends
    # them (each piece valid until the next is asked for), not from ``tensors``, which then
    # gives only their dtype and shape: a base streamed from the publisher's own copy
    # (``snapshot/shadow.py``), so the trainer holds no second copy of it.
    streamed: Mapping[str, Callable[[], Iterator[memoryview]]] = field(default_factory=dict)


class SnapshotSink(Protocol):
    """Where the trainer sends weights to be published. ``offer`` must never block training."""

    def offer(self, request: SnapshotRequest) -> None: ...

    def close(self, timeout: float = 10.0) -> None: ...
