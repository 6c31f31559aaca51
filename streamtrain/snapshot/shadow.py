"""The publisher's own copy of the weights at its last snapshot: bases without a table copy
on the training thread (double-buffering).

A full snapshot used to copy the whole model on the training thread (1.1 s per GB: training
stopped). Deltas already take only the changed rows; a base due by schedule
(``train.base_every_*``) now does too (``SnapshotRequest.complete``), and the publisher's
thread completes it here:

1. a full request (the first snapshot, or one whose rows were not known) is adopted as the
   copy: its tensors are the sink's own, nothing is copied again;
2. every request with rows, delta or scheduled base, is folded in: its rows scattered into
   the copy, its whole tensors replacing the copy's. Deltas cover every row changed since the
   previous snapshot (``row_tracker.py``), the invariant servers already rely on, so the copy
   is the model at that request's step;
3. a scheduled base is then published as the whole copy, copied again (into the previous
   base's buffers once there is one): the base lane writes it beside the deltas
   (``lanes.py``) while later requests keep folding into the copy.
4. that copy is made by whoever waits for the base's tensors (its ``wait_ready``: the base
   lane's thread, before it writes), not by the publisher's thread: at 0.26 GB the copy held
   a delta back 1.0 s at each base rotation. It runs in row chunks like the trainer's
   background copy (``train/snapshot_copy.py``, rules 2-3): before a later request's rows
   are scattered into the shadow, the rows at or past the copy's boundary are saved into an
   undo log, written over the base once the copy ends, so the base is exactly the shadow at
   its version. Whole tensors a request replaces are new tensors (``scatter_into``): the
   copy keeps reading the old ones. Tensors under ``MIN_BYTES`` are copied at once.

Requests are folded on the publisher's one thread, in order (superseded ones arrive merged
into the next, ``delta.merge_requests``, which keeps their rows), and a request that fails
to publish is merged into the next and folded again: scattering the same rows twice is
harmless. The cost moves to memory: the trainer holds the model once more, all the time, and
once more again from the first scheduled base on (the base buffers, filled on the base
lane's thread: no stall of the training thread nor of the deltas).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping

import torch

from streamtrain.snapshot.delta import scatter_into
from streamtrain.train.hooks import CopySpoiled, SnapshotRequest
from streamtrain.train.snapshot_copy import CHUNK_BYTES, MIN_BYTES, RowCopy

log = logging.getLogger(__name__)


class ShadowCopy:
    """Rules 1-3: ``fold`` each request in order; ``base`` takes a scheduled base from it."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, min_bytes: int = MIN_BYTES) -> None:
        self._tensors: dict[str, torch.Tensor] | None = None
        self._spare: dict[str, torch.Tensor] | None = None  # a written base's, for ``base``
        self._chunk_bytes, self._min_bytes = chunk_bytes, min_bytes
        self._lock = threading.Lock()  # the copy's boundaries and undo logs (rule 4)
        self._copying: dict[str, RowCopy] | None = None  # the base copy in progress

    @property
    def ready(self) -> bool:
        """Whether a whole base can be taken (a full snapshot was adopted)."""
        return self._tensors is not None

    def fold(self, request: SnapshotRequest) -> SnapshotRequest | None:
        """Rules 1-2: ``request`` with its copies complete, folded into the copy; None for a
        scheduled base with no copy to complete it from (it cannot happen after a first full
        snapshot; logged). A copy that could not be completed raises ``CopySpoiled``, and the
        copy kept so far is dropped: later deltas would fold into weights it never had."""
        try:
            request.wait_ready()
        except CopySpoiled:
            self._tensors = None
            raise
        request = dataclasses.replace(request, wait_ready=_ready)  # the copies are complete
        if request.rows is None:
            self._tensors = dict(request.tensors)
            return request
        copy = self._tensors
        if copy is None:
            if request.complete:
                log.error("base %d arrived as rows before any full snapshot", request.version)
                return None
            return request  # a delta with nothing to keep yet: published as it is
        self._save_rows(request.rows)
        scatter_into(copy, request.tensors, request.rows)
        return request

    def _save_rows(self, rows: Mapping[str, torch.Tensor]) -> None:
        """Rule 4 on the publisher's thread: the rows about to be scattered that the base
        copy has not passed yet go to its undo log first."""
        with self._lock:
            copying = self._copying
            if copying is None:
                return
            for name, index in rows.items():
                row_copy = copying.get(name)
                if row_copy is not None and not row_copy.done:
                    row_copy.save(index)

    def base(self, request: SnapshotRequest) -> SnapshotRequest:
        """Rules 3-4 for the folded ``request``: the whole copy at its version, its large
        tensors filled when its ``wait_ready`` runs, so the base lane copies it while later
        requests are folded (``lanes.py``). The copy goes into the buffers of the previous
        base when they were handed back (``reuse``) and still fit: a fresh model-sized
        allocation took seconds on a loaded machine (page faults), a copy into memory
        already mapped a fraction of that."""
        copy = self._tensors
        if copy is None:
            raise RuntimeError("base() before any full snapshot: check ready first")
        spare, self._spare = self._spare, None
        tensors: dict[str, torch.Tensor] = {}
        copying: dict[str, RowCopy] = {}
        with torch.no_grad():
            for name, tensor in copy.items():
                into = None if spare is None else spare.get(name)
                if into is None or into.shape != tensor.shape or into.dtype != tensor.dtype:
                    into = torch.empty_like(tensor, memory_format=torch.contiguous_format)
                tensors[name] = into
                if tensor.dim() == 0 or tensor.numel() * tensor.element_size() < self._min_bytes:
                    into.copy_(tensor)
                    continue
                row_bytes = max(1, tensor[0].numel() * tensor.element_size())
                copying[name] = RowCopy(
                    name=name,
                    param=tensor,
                    target=into,
                    sparse=True,
                    version=0,
                    rows_per_chunk=max(1, self._chunk_bytes // row_bytes),
                )
        with self._lock:
            self._copying = copying
        return dataclasses.replace(
            request,
            tensors=tensors,
            rows=None,
            complete=False,
            wait_ready=lambda: self._copy(copying),
        )

    def _copy(self, copying: dict[str, RowCopy]) -> None:
        """Rule 4 on the thread that waits for the base: chunk by chunk, the lock held only
        to move a boundary (a chunk read while a fold changes it is put right by the undo
        log), then the undo logs written over the copy."""
        for row_copy in copying.values():
            row_copy.track_saved(self._lock)
        for row_copy in copying.values():
            while True:
                with self._lock:
                    start = row_copy.copied
                if start >= row_copy.rows:
                    break
                stop = min(row_copy.rows, start + row_copy.rows_per_chunk)
                row_copy.copy_rows(start, stop)
                with self._lock:
                    row_copy.copied = stop
        with self._lock:
            if self._copying is copying:
                self._copying = None  # no fold saves rows for it any more
        for row_copy in copying.values():
            row_copy.undo()

    def reuse(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Hand back a written base's tensors for the next ``base`` to copy into (the caller
        no longer reads them). The trainer then holds them between bases: one model more in
        steady state, no more at the peak (a base being written holds them anyway). A copy
        never run (the write failed before it waited) stops saving rows here."""
        with self._lock:
            self._copying = None
        self._spare = dict(tensors)


def _ready() -> None:
    return None
