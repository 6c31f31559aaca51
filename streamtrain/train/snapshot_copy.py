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
3. Before every optimizer step (a step pre-hook, under the lock, which guards only this
   bookkeeping) the rows the step is about to change at or above the boundary are saved
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
   the last good state, a checkpoint load, user code) before its copy finished spoils the
   snapshot: its ``wait_ready`` raises ``CopySpoiled`` (the publisher drops it and waits for
   a full snapshot) and ``take_spoiled`` makes the trainer's next snapshot a full one.
5. A full snapshot taken while the previous one is still being copied waits for that copy
   to finish (a stall, only when full snapshots come faster than a copy).

The training thread's time per snapshot (its part of 1, the saves of 3, any of 5) is one
``streamtrain_snapshot_stall_seconds`` observation, made when the copy completes.
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
from streamtrain.train.copy_classes import TensorClasses
from streamtrain.train.hooks import CopySpoiled

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024  # the boundary moves this often: the rows a step may save
MIN_BYTES = 1024 * 1024  # smaller tensors are copied at once (cheaper than tracking them)


class StallClock:
    """The training thread's seconds spent on one snapshot, summed as they are spent."""

    def __init__(self, seconds: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._seconds = seconds

    def add(self, seconds: float) -> None:
        with self._lock:
            self._seconds += seconds

    @property
    def seconds(self) -> float:
        with self._lock:
            return self._seconds


@dataclass(eq=False)
class RowCopy:
    """One background tensor of a copy in progress (rules 2-3); also the publisher's copy of
    its shadow into a base (``snapshot/shadow.py``), where ``param`` is the shadow tensor."""

    name: str
    param: torch.Tensor
    target: torch.Tensor
    sparse: bool
    version: int  # the parameter's version counter after its last step
    rows_per_chunk: int
    copied: int = 0  # rows [0, copied) are in ``target``
    saved: torch.Tensor | None = None  # per row: already in the undo log
    log_index: list[torch.Tensor] = field(default_factory=list)
    log_values: list[torch.Tensor] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.target.shape[0])

    @property
    def done(self) -> bool:
        return self.copied >= self.rows

    def copy_rows(self, start: int, stop: int) -> None:
        """Rule 2 for rows [start, stop) (the copy thread, without the lock)."""
        with torch.no_grad():
            self.target[start:stop].copy_(self.param.detach()[start:stop])

    def save(self, index: torch.Tensor) -> None:
        """Rule 3: keep the current values of rows ``index`` not copied nor saved yet."""
        index = index[index >= self.copied]
        if index.numel() == 0:
            return
        if self.saved is None:
            self.saved = torch.zeros(self.rows, dtype=torch.bool)
        index = torch.unique(index)
        index = index[~self.saved[index]]
        if index.numel() == 0:
            return
        self.saved[index] = True
        self._log(index, self.param.detach().index_select(0, index))

    def save_rest(self) -> None:
        """Rule 3 for a step that may change any row: every row not copied yet, saved now."""
        start, self.copied = self.copied, self.rows
        self._log(torch.arange(start, self.rows), self.param.detach()[start:].clone())

    def _log(self, index: torch.Tensor, values: torch.Tensor) -> None:
        self.log_index.append(index)
        self.log_values.append(values)

    def undo(self) -> None:
        """The end of rule 3: saved rows back to their values at the snapshot step. Newest
        entries first, so a row saved twice ends with its first (oldest) saved value."""
        with torch.no_grad():
            entries = zip(self.log_index, self.log_values, strict=True)
            for index, values in reversed(list(entries)):
                self.target.index_copy_(0, index, values)
        self.log_index, self.log_values, self.saved = [], [], None


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
        self._in_step = False
        self._spoiled = False
        self._closed = False
        self._thread: threading.Thread | None = None
        optimizer.register_step_pre_hook(self._before_step)
        optimizer.register_step_post_hook(self._after_step)
        self._classes.watch(self._rows_changing)

    def applies(self) -> bool:
        """Whether the model's parameters are on the CPU (CUDA keeps its side-stream copy)."""
        first = next(self._model.parameters(), None)
        return first is not None and first.device.type == "cpu"

    def take_spoiled(self) -> bool:
        """Whether a copy was spoiled since the last call (rule 4: take a full snapshot)."""
        with self._lock:
            spoiled, self._spoiled = self._spoiled, False
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
        if not self._in_step and left.param._version != left.version:
            self._spoil(job, left)
            return None
        return left, left.copied, min(left.rows, left.copied + left.rows_per_chunk)

    def _spoil(self, job: _Job, background: RowCopy) -> None:
        """Rule 4 (the lock is held)."""
        job.error = (
            f"{background.name} changed outside an optimizer step while the snapshot was "
            "being copied; the next snapshot is taken whole"
        )
        log.warning("snapshot copy spoiled: %s", job.error)
        self._job = None
        self._spoiled = True
        job.done.set()

    def _before_step(self, *_: object) -> None:
        """Rule 3, on the training thread."""
        job = self._job
        if job is None:
            return
        started = time.perf_counter()
        with self._lock:
            if self._job is job:
                self._save_rows(job)
                self._in_step = self._job is job
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
        thread (``row_tracker.py`` rule 6)."""
        job = self._job
        if job is None or rows.size == 0:
            return
        started = time.perf_counter()
        with self._lock:
            if self._job is job:
                for background in job.tensors:
                    if background.name == name and not background.done:
                        _save_host(background, rows)
        job.clock.add(time.perf_counter() - started)

    def _after_step(self, *_: object) -> None:
        if not self._in_step:
            return
        with self._lock:
            self._in_step = False
            job = self._job
            if job is not None:
                for background in job.tensors:
                    background.version = background.param._version


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
