"""Decode one poll's JSON values on several cores (``ingest.decode_workers``).

msgspec holds the GIL while it parses (~1.9 µs a record, the JSON path's whole cost), so
threads would not help: :class:`DecodePool` keeps ``workers - 1`` worker processes
(:mod:`streamtrain.wire.json_worker`) and decodes one share itself.

1. A poll of ``n`` values is cut into contiguous slices, one per decoder, none smaller than
   ``min_slice`` (a small poll, as a caught-up live stream gives, is decoded here alone: no
   round trip for a few records).
2. Each worker is sent its slice (values and record timestamps, no pickle:
   :mod:`streamtrain.wire.decode_frames`); this thread decodes the first slice meanwhile;
   then each worker's answer is read in slice order.
3. The slices' results are joined in slice order with their rows moved by the slice's start.
   Decoding a record depends on that record alone, so the result is the one
   :func:`~streamtrain.wire.json_format.decode_json` gives over the whole poll, whatever the
   worker count: batches, rejects and their reasons are identical.

Memory is bounded by one poll: one slice in flight per worker. A worker that exits or breaks
a frame raises :class:`DecodeWorkerLost` naming it and how it ended; the pool is then closed
(every worker stopped) and the trainer stops with that line rather than hang.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress
from typing import IO, NoReturn

import numpy as np
import numpy.typing as npt

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import Decoded, decode_json
from streamtrain.wire.decode_frames import (
    FrameError,
    read_frame,
    read_response,
    request,
    write_frame,
)
from streamtrain.wire.decoded import merge
from streamtrain.wire.json_worker import spec_to_json

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8
MIN_SLICE = 2000  # fewest records sent to one worker: below it, the round trip is not worth it


def resolve_workers(setting: int | str, cores: int | None = None) -> int:
    """The decoder count of ``ingest.decode_workers``: an integer as is; ``auto`` is 1 where
    this trainer process has 2 cores or fewer (the broker client and the trainer need them:
    measured in bench/README.md, "Ingest"), else its cores - 1 up to :data:`MAX_AUTO_WORKERS`.
    Its cores are the machine's (CPU affinity) shared among the ranks torchrun started on it
    (``LOCAL_WORLD_SIZE``), so eight ranks on 16 cores get one decoder each, not 8 x 8.

    >>> resolve_workers("auto", cores=2), resolve_workers("auto", cores=16), resolve_workers(3)
    (1, 8, 3)
    """
    if isinstance(setting, int):
        return setting
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        local = parse_ascii_int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores //= local if local else 1
    return 1 if cores <= 2 else min(cores - 1, MAX_AUTO_WORKERS)


def start_pool(spec: SampleSpec, setting: int | str, codec: str) -> DecodePool | None:
    """The started pool ``ingest.decode_workers`` asks for; None for one decoder, or for a
    topic declared binary (``ingest.codec``), which has no JSON to decode."""
    workers = resolve_workers(setting)
    if workers < 2 or codec == "binary":
        return None
    pool = DecodePool(spec, workers)
    pool.start()
    return pool


class DecodeWorkerLost(RuntimeError):
    """A decode worker exited or sent a broken answer."""


class DecodePool:
    """``workers`` JSON decoders: this thread and ``workers - 1`` processes (started by
    :meth:`start`, or on first use). Call it as
    :func:`~streamtrain.wire.json_format.decode_json`."""

    def __init__(self, spec: SampleSpec, workers: int, min_slice: int | None = None) -> None:
        if workers < 2:
            raise ValueError(f"a decode pool needs >= 2 decoders, got {workers}")
        self._spec = spec
        self._workers = workers
        self._min_slice = MIN_SLICE if min_slice is None else min_slice
        self._procs: list[subprocess.Popen[bytes]] = []
        self._closed = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def start(self) -> None:
        """Start the worker processes (once)."""
        if self._procs or self._closed:
            return
        command = [sys.executable, "-m", "streamtrain.wire.json_worker", spec_to_json(self._spec)]
        for _ in range(self._workers - 1):
            self._procs.append(
                subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            )
        log.info("started %d JSON decode workers %s", len(self._procs), self.pids)

    def __call__(
        self, spec: SampleSpec, values: Sequence[bytes], record_ts: npt.NDArray[np.float64]
    ) -> Decoded:
        if self._closed:
            raise RuntimeError("the decode pool is closed")
        n = len(values)
        slices = max(1, min(self._workers, n // self._min_slice))
        if slices == 1:
            return decode_json(spec, values, record_ts)
        self.start()
        bounds = np.linspace(0, n, slices + 1).astype(int).tolist()
        sent = []
        for proc, start, end in zip(self._procs, bounds[1:-1], bounds[2:], strict=False):
            self._send(proc, request(values[start:end], record_ts[start:end]))
            sent.append((proc, start))
        parts = [decode_json(spec, values[: bounds[1]], record_ts[: bounds[1]])]
        for proc, start in sent:
            part = self._receive(proc)
            part.rows = part.rows + start
            part.rejects = {row + start: r for row, r in part.rejects.items()}
            parts.append(part)
        return merge(spec, parts, {})

    def _send(self, proc: subprocess.Popen[bytes], frame: list[bytes]) -> None:
        stdin: IO[bytes] | None = proc.stdin
        assert stdin is not None
        try:
            write_frame(stdin, frame)
        except (BrokenPipeError, OSError):
            self._lost(proc, "could not be sent its records")

    def _receive(self, proc: subprocess.Popen[bytes]) -> Decoded:
        assert proc.stdout is not None
        try:
            payload = read_frame(proc.stdout)
            if payload is None:
                self._lost(proc, "closed its output")
            return read_response(self._spec, payload)
        except FrameError as exc:
            self._lost(proc, str(exc))

    def _lost(self, proc: subprocess.Popen[bytes], what: str) -> NoReturn:
        try:
            code = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        if code is None:
            how = "is still running"
        elif code < 0:
            how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        raise DecodeWorkerLost(
            f"JSON decode worker pid {proc.pid} {what} and {how}; ingest stops here (restart "
            "the trainer: it resumes from its last checkpoint; ingest.decode_workers=1 "
            "decodes without workers)"
        )

    def close(self) -> None:
        """Stop every worker: close its input (it exits at EOF), then wait; kill a laggard."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with suppress(OSError):  # a broken pipe on the final flush: it is gone
                        pipe.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
