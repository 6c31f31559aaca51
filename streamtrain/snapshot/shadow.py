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
3. a scheduled base is then published from the copy itself, streamed (no copy of it): the
   base lane writes it beside the deltas (``lanes.py``) while later requests keep folding
   into the copy.
4. The stream reads the copy in row chunks of ``chunk_bytes`` into one bounce buffer, on the
   base lane's thread, chunk by chunk as the writer asks for the payload's bytes
   (``payload.encode_parts``, ``streamed``). Per large tensor it keeps a boundary,
   ``copied``: the first row of the chunk being read. Before a fold scatters rows into the
   copy, those at or past the boundary are saved into an undo log, each row once (its value
   at the base's version, ``RowCopy.save``); a fold never changes a row under the boundary
   without the stream having read it already. After reading rows [a, b) into the bounce
   buffer, the stream moves the boundary to b and takes the undo entries of rows under b out
   of the log, both under the lock, then writes them over the bounce buffer (oldest last,
   so the value at the base's version wins). The race, thought through: an entry for a row
   r in [a, b) is made under the lock while the boundary is at most a, so before the
   boundary moves to b: every fold that changed r after the base's version saved r first,
   and its entry is among those taken. A row never saved was not changed since the base's
   version, so the bounce buffer read it right whether or not a fold ran meanwhile. A fold
   after the boundary passed b saves nothing under b and changes only the copy, not the
   bytes already handed to the writer. Whole tensors a request replaces are new tensors
   (``scatter_into``): the stream keeps reading the old ones. Tensors under ``MIN_BYTES``
   (and dtypes the payload encoder does not write itself) are copied at once. The bytes,
   the chunks' sha256 and the manifest are those of ``encode_parts`` of a plain copy of the
   copy at the base's version (``tests/unit/test_shadow_stream.py``).

Requests are folded on the publisher's one thread, in order (superseded ones arrive merged
into the next, ``delta.merge_requests``, which keeps their rows), and a request that fails
to publish is merged into the next and folded again: scattering the same rows twice is
harmless. The cost moves to memory: the trainer holds the model once more, all the time
(the copy); a base adds one bounce buffer, the undo log (one saved row per row folded while
the base is written, at most one per row of the table: the one-byte-a-row bitmaps, made
when the base is taken, keep a row from being saved twice). Until
the base buffers went (issue 26), a base added one more whole copy of the model.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Iterator, Mapping

import torch

from streamtrain.snapshot.delta import scatter_into
from streamtrain.snapshot.payload import Pieces, streamable
from streamtrain.train.hooks import CopySpoiled, SnapshotRequest
from streamtrain.train.row_copy import RowCopy
from streamtrain.train.snapshot_copy import CHUNK_BYTES, MIN_BYTES

log = logging.getLogger(__name__)


class ShadowCopy:
    """Rules 1-3: ``fold`` each request in order; ``base`` takes a scheduled base from it."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES, min_bytes: int = MIN_BYTES) -> None:
        self._tensors: dict[str, torch.Tensor] | None = None
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
        tensors ``streamed`` from the copy itself as the writer reads them, so the base lane
        writes it while later requests are folded (``lanes.py``). Call ``release`` once its
        write has returned (or failed)."""
        copy = self._tensors
        if copy is None:
            raise RuntimeError("base() before any full snapshot: check ready first")
        tensors: dict[str, torch.Tensor] = {}
        copying: dict[str, RowCopy] = {}
        streamed: dict[str, Pieces] = {}
        with torch.no_grad():
            for name, tensor in copy.items():
                if not self._streams(tensor):
                    tensors[name] = tensor.clone(memory_format=torch.contiguous_format)
                    continue
                tensors[name] = tensor  # its dtype and shape: the bytes are streamed
                row_bytes = max(1, tensor[0].numel() * tensor.element_size())
                copying[name] = RowCopy(
                    name=name,
                    param=tensor,
                    target=None,
                    sparse=True,
                    version=0,
                    rows_per_chunk=max(1, self._chunk_bytes // row_bytes),
                )
                streamed[name] = functools.partial(self._stream, copying[name])
        for row_copy in copying.values():  # every tensor's, before its stream reaches it
            row_copy.track_saved(self._lock)
        with self._lock:
            self._copying = copying
        return dataclasses.replace(
            request,
            tensors=tensors,
            rows=None,
            complete=False,
            wait_ready=_ready,
            streamed=streamed,
        )

    def _streams(self, tensor: torch.Tensor) -> bool:
        return (
            tensor.dim() > 0
            and tensor.numel() * tensor.element_size() >= self._min_bytes
            and tensor.is_contiguous()
            and streamable(tensor)
        )

    def _stream(self, row_copy: RowCopy) -> Iterator[memoryview]:
        """Rule 4 on the thread that writes the base: each chunk of rows read into one bounce
        buffer, put right from the undo log, handed out as a view valid until the next."""
        shape, dtype = row_copy.param.shape, row_copy.param.dtype
        bounce = torch.empty((row_copy.rows_per_chunk, *shape[1:]), dtype=dtype)
        start = 0
        while start < row_copy.rows:
            stop = min(row_copy.rows, start + row_copy.rows_per_chunk)
            out = bounce[: stop - start]
            row_copy.copy_rows(start, stop, out)
            with self._lock:
                row_copy.copied = stop
                entries = row_copy.take_below(stop)
            for index, values in reversed(entries):  # oldest last: its value wins
                out.index_copy_(0, index - start, values)
            yield out.reshape(-1).view(torch.uint8).numpy().data
            start = stop

    def release(self) -> None:
        """The base's write returned (or failed): no fold saves rows for it any more."""
        with self._lock:
            self._copying = None


def _ready() -> None:
    return None
