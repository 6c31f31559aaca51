"""A whole-model snapshot copied off the training thread: copy-on-write at row granularity.

A full snapshot (the first of a process, a model without row-sparse parameters, a base whose
changed rows are not known) used to copy the model on the training thread: 1.3-1.7 s at
0.26 GB on a loaded machine, with training stopped. Now the training thread copies only what
is small, a copy thread fills in the rest while training goes on, and the snapshot is still
exactly the weights at its step:

1. At the snapshot point the training thread copies the buffers, the tensors under
   ``min_bytes`` and those of a module that changes rows outside optimizer steps without
   naming them first, and only allocates the rest, the *background tensors* (CPU parameters
   and a dynamic table's mapping buffers: ``copy_classes.py``), noting their in-place
   version counters.
2. The copy thread copies the background tensors in row chunks of ``chunk_bytes``, the
   dense ones first, never holding the copier's lock while it copies: per tensor it keeps a
   boundary, the first row of the chunk it is copying, moved on once that chunk is done.
   The lock orders the copy thread's bookkeeping against ``copy`` and ``close`` only.
3. Before every optimizer step (a step pre-hook that takes no lock: why that is safe is in
   ``_before_step``) the rows the step is about to change at or above the boundary are saved
   first, into an undo log:
   - a row-sparse parameter (``row_tracker.row_sparse_parameters``) with a sparse gradient:
     the rows the gradient names, each row once. The step changes only those
     (``row_tracker.py`` rule 1; ``model_traits.check_sparse_gradients`` admits only such
     optimizers); without a gradient it changes none;
   - any other background tensor (or a dense gradient): every row from the boundary on.
   A dynamic table saves the same way the rows it is about to change outside a step (the
   weight rows it re-draws, its mapping rows: ``row_tracker.py`` rule 6).
   After the last chunk the undo log is written over the copy, newest entries first: each
   saved row takes the value it had before its first change, and a chunk read while a step
   changed it is put right, so the copy is the weights at the snapshot step.
4. A background tensor whose version counter moved outside an optimizer step (a rollback to
   the last good state, a checkpoint load, user code; told apart from a step's by a step
   counter the hooks make odd during a step, read before and after: a seqlock) before its
   copy finished spoils the
   snapshot: its ``wait_ready`` raises ``CopySpoiled`` (the publisher drops it and waits for
   a full snapshot) and ``take_spoiled`` makes the trainer's next snapshot a full one.
5. A full snapshot taken while the previous one is still being copied waits for that copy
   to finish (a stall, only when full snapshots come faster than a copy).

The training thread's time per snapshot (its part of 1, the saves of 3, any of 5) is one
``streamtrain_snapshot_stall_seconds`` observation, made when the copy completes. Nothing the
training thread does for it grows with the model: 1 allocates the large tensors without
touching them, and the saves of 3 cost per row a step changes (the per-row bitmap that keeps a
row from being saved twice, one byte a row, is made by the copy thread: ``RowCopy.track_saved``).
Their sum grows with the copy's length (one save per step while it runs, 0.1-0.2 ms each at
500 rows), the longest single pause (``StallClock.longest``) does not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from streamtrain import metrics
from streamtrain.train.batch_policy import batch_scheduling
from streamtrain.train.copy_classes import TensorClasses
from streamtrain.train.hooks import CopySpoiled
from streamtrain.train.row_copy import RowCopy

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024  # the boundary moves this often: the rows a step may save
MIN_BYTES = 1024 * 1024  # smaller tensors are copied at once (cheaper than tracking them)


class StallClock:
    """The training thread's seconds spent on one snapshot: summed as they are spent
    (``seconds``), and the longest of them in one go (``longest``: the snapshot point, or one
    step's saves), the most that training stopped at once."""

    def __init__(self, seconds: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._seconds = seconds
        self._longest = seconds

    def add(self, seconds: float) -> None:
        with self._lock:
            self._seconds += seconds
            self._longest = max(self._longest, seconds)

    @property
    def seconds(self) -> float:
        with self._lock:
            return self._seconds

    @property
    def longest(self) -> float:
        with self._lock:
            return self._longest


@dataclass(eq=False)
class _Job:
    tensors: list[RowCopy]
    clock: StallClock
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise CopySpoiled(self.error)


@dataclass(frozen=True)
class FullCopy:
    """A whole snapshot being copied: ``tensors`` are complete once ``wait_ready`` returns."""

    tensors: dict[str, torch.Tensor]
    wait_ready: Callable[[], None]
    stall: StallClock


class SnapshotCopier:
    """Rules 1-5 for the CPU ``model`` trained by ``optimizer`` (its step hooks are used).

    Example:
        >>> copier = SnapshotCopier(model, optimizer)  # doctest: +SKIP
        >>> full = copier.copy()  # returns in milliseconds  # doctest: +SKIP
        >>> full.wait_ready()  # on the publisher's thread  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        min_bytes: int = MIN_BYTES,
    ) -> None:
        self._model = model
        self._chunk_bytes = chunk_bytes
        self._min_bytes = min_bytes
        self._classes = TensorClasses.of(model)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._job: _Job | None = None
        # Odd while an optimizer step may be changing the weights: incremented by the step
        # hooks on the training thread only, read by the copy thread as a seqlock (_claim).
        self._steps = 0
        # Spoiled copies, counted per thread that found them (each counter has one writer),
        # and how many ``take_spoiled`` has seen: no lock on the training thread's path.
        self._spoils = {"training": 0, "copy": 0}
        self._spoils_seen = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        optimizer.register_step_pre_hook(self._before_step)
        optimizer.register_step_post_hook(self._after_step)
        self._classes.watch(self._rows_changing)
        if self.applies():  # started here, not at the first snapshot: 0.2-4 ms of its stall
            with self._lock:
                self._start_thread()

    def applies(self) -> bool:
        """Whether the model's parameters are on the CPU (CUDA keeps its side-stream copy)."""
        first = next(self._model.parameters(), None)
        return first is not None and first.device.type == "cpu"

    def take_spoiled(self) -> bool:
        """Whether a copy was spoiled since the last call (rule 4: take a full snapshot)."""
        spoils = sum(self._spoils.values())
        spoiled, self._spoils_seen = spoils != self._spoils_seen, spoils
        return spoiled

    def copy(self, started: float | None = None) -> FullCopy:
        """Rule 1 (and 5) on the training thread; ``started``: when the snapshot began."""
        started = time.perf_counter() if started is None else started
        with self._lock:
            previous = self._job
        if previous is not None:
            previous.done.wait()  # rule 5: the copy thread finishes it
        params = self._classes.sources(self._model)
        tensors: dict[str, torch.Tensor] = {}
        background: list[RowCopy] = []
        for name, tensor in self._model.state_dict().items():
            param = params.get(name)
            if param is None or not self._classes.background(name, tensor, self._min_bytes):
                tensors[name] = tensor.detach().clone(memory_format=torch.contiguous_format)
                continue
            target = torch.empty(tensor.shape, dtype=tensor.dtype)  # pages mapped by the copy
            tensors[name] = target
            row_bytes = max(1, tensor[0].numel() * tensor.element_size())
            background.append(
                RowCopy(
                    name=name,
                    param=param,
                    target=target,
                    sparse=name in self._classes.sparse,
                    version=param._version,
                    rows_per_chunk=max(1, self._chunk_bytes // row_bytes),
                )
            )
        clock = StallClock()
        if not background:
            clock.add(time.perf_counter() - started)
            metrics.SNAPSHOT_STALL_SECONDS.observe(clock.seconds)
            return FullCopy(tensors, _ready, clock)
        background.sort(key=lambda b: b.sparse)  # dense first: a step finishes them anyway
        job = _Job(background, clock)
        with self._lock:
            self._job = job
            self._start_thread()
            self._wake.notify_all()
        clock.add(time.perf_counter() - started)
        return FullCopy(tensors, job.wait, clock)

    def close(self) -> None:
        """Finish a copy in progress on this thread, then stop the copy thread."""
        with self._lock:
            job = self._job
        if job is not None:
            job.done.wait()
        self._classes.watch(None)
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="snapshot-copy", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        batch_scheduling()  # woken at a snapshot point: it must not preempt training
        while True:
            with self._lock:
                while self._job is None and not self._closed:
                    self._wake.wait()
                job = self._job
                if job is None:
                    return
            self._run(job)

    def _run(self, job: _Job) -> None:
        """Rules 2-3 on the copy thread, the only one that writes ``job``'s tensors. The lock
        is held for the bookkeeping only, never for a copy: a step saves the rows at or above
        the boundary of each tensor (the start of the chunk being copied), so a chunk read
        while a step changes it is put right by the undo log."""
        for background in job.tensors:
            if background.sparse:
                background.track_saved(self._lock)
        while True:
            with self._lock:
                claim = self._claim(job)
            if claim is None:
                return
            if claim == "complete":
                break
            background, start, stop = claim
            background.copy_rows(start, stop)
            with self._lock:
                if background.copied == start:  # not saved whole by a step meanwhile
                    background.copied = stop
        for background in job.tensors:  # no step saves rows for the job any more
            background.undo()
        job.done.set()
        metrics.SNAPSHOT_STALL_SECONDS.observe(job.clock.seconds)

    def _claim(self, job: _Job) -> tuple[RowCopy, int, int] | Literal["complete"] | None:
        """The next chunk of ``job`` (the lock is held); None when spoiled or taken over."""
        if self._job is not job:
            return None
        left = next((b for b in job.tensors if not b.done), None)
        if left is None:
            self._job = None
            return "complete"
        steps = self._steps
        expected, now = left.version, left.param._version
        if steps % 2 == 0 and steps == self._steps and now != expected:
            self._spoil(job, left)  # no step ran while both were read: a change outside one
            return None
        return left, left.copied, min(left.rows, left.copied + left.rows_per_chunk)

    def _spoil(self, job: _Job, background: RowCopy) -> None:
        """Rule 4 (by either thread: a second spoil of a job, or one racing its completion,
        is harmless; the publisher then drops the snapshot)."""
        job.error = (
            f"{background.name} changed outside an optimizer step while the snapshot was "
            "being copied; the next snapshot is taken whole"
        )
        log.warning("snapshot copy spoiled: %s", job.error)
        self._job = None
        by = "copy" if threading.current_thread() is self._thread else "training"
        self._spoils[by] += 1
        job.done.set()

    def _before_step(self, *_: object) -> None:
        """Rule 3, on the training thread, **without the copier's lock**: waiting for it
        meant waiting for the copy thread while it held the lock, and a copy thread that the
        kernel or the GIL did not run then stopped training 53-74 ms (measured at load 13,
        bench/README.md). The saves need no lock: ``copied`` only moves on once a chunk has
        been read, so a row under the value a save reads was read before this step changes
        it, and a row at or above it is saved (a save of a row the copy thread reads
        meanwhile is one too many, never one too few). A dense ``save_rest`` racing the copy
        thread's move of ``copied`` may put the boundary back: that chunk is read again and
        its rows saved again, and the undo log keeps the oldest value."""
        self._steps += 1  # odd: the step may change the weights from here on
        job = self._job
        if job is None:
            return
        started = time.perf_counter()
        self._save_rows(job)
        job.clock.add(time.perf_counter() - started)

    def _save_rows(self, job: _Job) -> None:
        for background in job.tensors:
            if background.done:
                continue
            param = background.param
            if param._version != background.version:
                self._spoil(job, background)
                return
            grad = param.grad
            if not background.sparse:
                background.save_rest()
            elif grad is not None and grad.is_sparse:
                background.save(grad._indices()[0].detach().to("cpu"))
            elif grad is not None:  # a dense gradient: any row may move
                background.save_rest()

    def _rows_changing(self, name: str, rows: npt.NDArray[np.int64]) -> None:
        """Rule 3 for rows a dynamic table is about to change outside a step, on the training
        thread (``row_tracker.py`` rule 6), without the lock as ``_before_step``."""
        job = self._job
        if job is None or rows.size == 0:
            return
        started = time.perf_counter()
        for background in job.tensors:
            if background.name == name and not background.done:
                _save_host(background, rows)
        job.clock.add(time.perf_counter() - started)

    def _after_step(self, *_: object) -> None:
        job = self._job
        if job is not None:
            for background in job.tensors:
                background.version = background.param._version
        self._steps += 1  # even: the versions above are the step's (read by _claim)


def _save_host(background: RowCopy, rows: npt.NDArray[np.int64]) -> None:
    """``RowCopy.save`` for rows a module is about to change, in few operations: it runs up
    to six times a step (torch's dispatch per operation cost more than the few hundred rows).
    A row saved twice (not marked in ``saved``) keeps its oldest value: the undo log is
    written newest entries first."""
    index = rows[rows >= background.copied]
    if index.size:
        taken = torch.from_numpy(index)
        background._log(taken, background.param.detach().index_select(0, taken))


def _ready() -> None:
    return None
