"""The forward pass behind an infer request: direct per request, or dynamically batched.

Every forward pass runs under one ``WeightSlot.acquire`` lease and returns the version it ran
on, so each request reports the weights that really answered it. Results are copied to host
memory inside the lease: on CUDA that copy waits for the kernels, so the lease cannot end (and
the loader cannot overwrite those weights) while a kernel still reads them.

>>> import torch
>>> slot = WeightSlot(torch.nn.Linear(2, 3))
>>> from streamtrain.snapshot.manifest import SnapshotHeader
>>> slot.load({"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, SnapshotHeader(1, "r"))
>>> spec = SampleSpec((2,), "multiclass", num_classes=3)
>>> engine = DirectEngine(slot, head_for(spec), torch.device("cpu"))
>>> result = engine.run(np.ones((1, 2), dtype=np.float32))
>>> result.info.version, result.outputs["predicted_class"].tolist()
(1, [0])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio.to_thread
import numpy as np
import torch

from streamtrain.metrics import SERVE_BATCH_SIZE
from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.sample.sparse_torch import to_tensors
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.fast_forward import ForwardCache
from streamtrain.serve.weights.slot import WeightsInfo, WeightSlot
from streamtrain.train.task import TaskHead

log = logging.getLogger(__name__)

Head = Callable[[torch.Tensor], dict[str, torch.Tensor]]
Array = np.ndarray[Any, Any]


def head_for(spec: SampleSpec) -> Head:
    """Model outputs to named OIP outputs: the trainer's own ``TaskHead.predict``."""
    return TaskHead(spec).predict


@dataclass(frozen=True)
class Prediction:
    info: WeightsInfo
    outputs: dict[str, Array]  # host arrays, first dim = rows of the request


class Engine(Protocol):
    """Runs features [n, ...] through the live weights."""

    async def infer(self, features: Array, sparse: SparseRows | None = None) -> Prediction: ...

    def close(self) -> None: ...


def call_model(
    model: Callable[..., torch.Tensor],
    features: Array,
    sparse: SparseRows | None,
    device: torch.device,
) -> torch.Tensor:
    """``model(x)``, or ``model(x, sparse)`` for a model with sparse ID features; ``model`` is
    the module or its direct forward (:mod:`.fast_forward`)."""
    batch = torch.from_numpy(features)
    if device.type != "cpu":
        batch = batch.to(device, non_blocking=True)
    return model(batch) if sparse is None else model(batch, to_tensors(sparse, device))


def _forward(
    slot: WeightSlot,
    head: Head,
    device: torch.device,
    forwards: ForwardCache,
    features: Array,
    sparse: SparseRows | None = None,
) -> Prediction:
    # torch.inference_mode's own guard: the Python wrapper around it costs ~1 µs per pass more
    with slot.acquire() as lease, torch._C._InferenceMode(True):
        outputs = head(call_model(forwards.of(lease.model), features, sparse, device))
        host = to_host(outputs, device)
    SERVE_BATCH_SIZE.observe(features.shape[0])
    return Prediction(lease.info, host)


def to_host(outputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, Array]:
    """Named outputs as host arrays (a CPU tensor's ``numpy()`` is a view, no ``cpu()`` call)."""
    if device.type == "cpu":
        return {name: t.numpy() for name, t in outputs.items()}
    return {name: t.cpu().numpy() for name, t in outputs.items()}


_TIME_EVERY = 8


class PassTimer:
    """Whether a forward pass is short enough to run on the event loop, from a running estimate
    of its seconds per row: the one rule of :class:`DirectEngine` and of the retained versions
    that answer a split's candidate share (:mod:`streamtrain.serve.weights.retained`).

    Handing a pass to a worker thread costs a thread hop and a GIL handover each way, which for
    a small model is most of the request (measured on 2 CPU cores, MLP 32-256-256-10, one row:
    1,050 req/s with p99 60 ms through a thread, 1,640 req/s with p99 14 ms inline). So a pass
    whose expected time is under ``inline_below_s`` runs inline; a longer one runs on a thread,
    where torch releases the GIL and the loop keeps reading other requests. The expected time
    is the number of rows times a running average of measured seconds per row (of one pass in
    eight, on either path); until the first pass is measured, passes go to a thread. On CPU a
    pass is timed in thread CPU time, so a machine busy with other work, which stretches wall
    time equally inline or not, does not push passes onto the thread path; on an accelerator
    the wait for the device is part of what the loop would lose, so wall time counts.
    """

    def __init__(self, device: torch.device, inline_below_s: float = 0.001) -> None:
        self._inline_below_s = inline_below_s
        self._seconds_per_row: float | None = None
        self._untimed = 0
        self._clock = time.thread_time if device.type == "cpu" else time.perf_counter

    def inline(self, rows: int) -> bool:
        per_row = self._seconds_per_row
        return per_row is not None and per_row * rows < self._inline_below_s

    def run(self, rows: int, forward: Callable[..., Prediction], *args: Any) -> Prediction:
        """``forward(*args)``, timed now and then."""
        # Thread CPU time is a system call; timing one pass in _TIME_EVERY keeps the estimate
        # current for a fraction of the cost.
        self._untimed += 1
        if self._seconds_per_row is not None and self._untimed < _TIME_EVERY:
            return forward(*args)
        self._untimed = 0
        started = self._clock()
        prediction = forward(*args)
        per_row = (self._clock() - started) / max(1, rows)
        known = self._seconds_per_row
        # A benign race between threads: either update is a valid recent estimate.
        self._seconds_per_row = per_row if known is None else known + (per_row - known) / 4
        return prediction

    async def infer(self, rows: int, forward: Callable[..., Prediction], *args: Any) -> Prediction:
        """``forward(*args)`` inline when short, else on a worker thread."""
        if self.inline(rows):
            return self.run(rows, forward, *args)
        return await anyio.to_thread.run_sync(self.run, rows, forward, *args)


class DirectEngine:
    """One forward pass per request: on the event loop when it is short, else on a thread
    (:class:`PassTimer` says which)."""

    def __init__(
        self,
        slot: WeightSlot,
        head: Head,
        device: torch.device,
        inline_below_s: float = 0.001,
    ) -> None:
        self._slot = slot
        self._head = head
        self._device = device
        self._timer = PassTimer(device, inline_below_s)
        self._forwards = ForwardCache()

    def run(self, features: Array, sparse: SparseRows | None = None) -> Prediction:
        return self._timer.run(features.shape[0], self._pass, features, sparse)

    async def infer(self, features: Array, sparse: SparseRows | None = None) -> Prediction:
        timer, rows = self._timer, features.shape[0]
        if timer.inline(rows):  # the common case, without PassTimer.infer's coroutine
            return timer.run(rows, self._pass, features, sparse)
        return await timer.infer(rows, self._pass, features, sparse)

    def _pass(self, features: Array, sparse: SparseRows | None) -> Prediction:
        return _forward(self._slot, self._head, self._device, self._forwards, features, sparse)

    def close(self) -> None:
        return None


_Job = tuple[Array, "concurrent.futures.Future[Prediction]", SparseRows | None]


class BatchingEngine:
    """Concurrent requests share one forward pass: up to ``max_batch_size`` rows, waiting at
    most ``max_wait_s`` after the first request for others to join.

    All requests in one pass run on one lease, so they report the same version.

    >>> import torch
    >>> slot = WeightSlot(torch.nn.Linear(2, 1))
    >>> from streamtrain.snapshot.manifest import SnapshotHeader
    >>> slot.load({"weight": torch.ones(1, 2), "bias": torch.zeros(1)}, SnapshotHeader(3, "r"))
    >>> spec = SampleSpec((2,), "regression")
    >>> engine = BatchingEngine(slot, head_for(spec), torch.device("cpu"), 8, 0.001)
    >>> engine.submit(np.ones((2, 2), dtype=np.float32)).result().outputs["value"].tolist()
    [[2.0], [2.0]]
    >>> engine.close()
    """

    def __init__(
        self,
        slot: WeightSlot,
        head: Head,
        device: torch.device,
        max_batch_size: int,
        max_wait_s: float,
    ) -> None:
        self._slot = slot
        self._head = head
        self._device = device
        self._max_rows = max_batch_size
        self._max_wait_s = max_wait_s
        self._forwards = ForwardCache()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="serve-batcher", daemon=True)
        self._thread.start()

    def submit(
        self, features: Array, sparse: SparseRows | None = None
    ) -> concurrent.futures.Future[Prediction]:
        future: concurrent.futures.Future[Prediction] = concurrent.futures.Future()
        if self._closed:
            future.set_exception(RuntimeError("the inference engine is shut down"))
        else:
            self._jobs.put((features, future, sparse))
        return future

    async def infer(self, features: Array, sparse: SparseRows | None = None) -> Prediction:
        return await asyncio.wrap_future(self.submit(features, sparse))

    def close(self) -> None:
        self._closed = True
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        pending: _Job | None = None
        stopping = False
        while not stopping:
            first = pending if pending is not None else self._jobs.get()
            pending = None
            if first is None:
                return
            jobs = [first]
            rows = first[0].shape[0]
            deadline = time.monotonic() + self._max_wait_s
            while rows < self._max_rows:
                try:
                    job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                if rows + job[0].shape[0] > self._max_rows:
                    pending = job  # starts the next batch
                    break
                jobs.append(job)
                rows += job[0].shape[0]
            self._run(jobs)
            if stopping and pending is not None:
                self._run([pending])

    def _run(self, jobs: list[_Job]) -> None:
        try:
            features = jobs[0][0] if len(jobs) == 1 else np.concatenate([j[0] for j in jobs])
            parts = [j[2] for j in jobs if j[2] is not None]
            sparse = SparseRows.concat(parts) if parts else None
            result = _forward(
                self._slot, self._head, self._device, self._forwards, features, sparse
            )
        except BaseException as exc:
            for _, future, _ in jobs:
                future.set_exception(exc)
            return
        start = 0
        for job_features, future, _ in jobs:
            stop = start + job_features.shape[0]
            outputs = {name: array[start:stop] for name, array in result.outputs.items()}
            future.set_result(Prediction(result.info, outputs))
            start = stop
