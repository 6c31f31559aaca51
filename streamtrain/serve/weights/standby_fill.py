"""A new replica's first base written into its standby tensors as the chunks arrive (issue 26).

Why: a replica used to read its whole base into the spool, then check it for NaN/Inf and copy
it out of the memory-mapped spool into its model: 0.6–8.9 s per GB after the read on a loaded
machine (first-touch page faults of the model's untouched pages, the mapped file's page faults,
the copy; ``bench/replica_load.py``), while the read itself spends most of its time waiting for
the broker. A :class:`StandbyFill` does that work chunk by chunk during the read, on the bytes the
reader holds anyway, so what is left after the read is the verification that was already
there and the swap.

What keeps it safe (docs/snapshots.md, "The load path and its memory"):

1. The slot makes a fill only while **nothing is live** (a new replica, or one whose every
   load failed so far) and only for a base whose signed manifest was screened before its
   chunks are read (the catch-up's read from ``first_chunk_offset``). Nothing reads the
   standby tensors while nothing is live: requests get 503, and deltas need a live version.
2. Chunks must come in index order, each once, each matching its own sha256 header (the
   spool hands over only those); anything else abandons the fill and the slot's ordinary
   load path runs after verification, as before.
3. The payload's safetensors header is parsed and validated as ``mapped.py`` does, and its
   names, shapes and dtypes (exact: bytes are copied, never cast) must be the model's before
   the first byte is written; otherwise the fill is abandoned.
4. Each float tensor's elements are checked for NaN/Inf as they are completed; one found
   abandons the fill (the ordinary path then refuses the snapshot as ``non_finite``).
5. Every write takes the slot's load lock and checks that the slot still has nothing live
   and that this is its newest fill: a load by any other path in between retires the fill.
6. The slot makes the standby live from a fill only in ``WeightSlot.load``, given the
   verified snapshot (sha256 of the whole payload against the signed manifest, the tensors
   against the manifest's list) the fill was made for and with every byte written. A fill
   abandoned half-way leaves the standby partly written and not live; the next base loaded,
   by either path, writes every tensor whole.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import numpy as np
import torch

from streamtrain.snapshot.mapped import Span, header_length, parse_header
from streamtrain.snapshot.payload import CodecError

log = logging.getLogger(__name__)

_JUDGE_BYTES = 4 * 1024 * 1024  # judged for NaN/Inf at a time, as mapped.all_finite does


class _Target:
    """One tensor's span of the payload and the standby bytes it goes to."""

    def __init__(self, span: Span, target: torch.Tensor) -> None:
        self.span = span
        self.tensor = target.detach().reshape(-1)  # a view: the tensors are contiguous
        self.bytes = self.tensor.view(torch.uint8).numpy()
        self.itemsize = target.element_size()
        self.floating = target.dtype.is_floating_point
        self.checked = 0  # elements judged finite so far


class StandbyFill:
    """Writes one base's chunks into ``targets`` (the slot's standby tensors) as they come.

    ``lock`` is the slot's load lock; ``current()`` (called with it held) says whether the
    standby may still be written by this fill (rule 5 above).
    """

    def __init__(
        self,
        snapshot_id: str,
        size: int,
        targets: Mapping[str, torch.Tensor],
        lock: threading.Lock,
        current: Callable[[StandbyFill], bool],
    ) -> None:
        self.snapshot_id = snapshot_id
        self.size = size
        self._targets = targets
        self._lock = lock
        self._current = current
        self._next = 0  # the chunk index expected next
        self._received = 0  # payload bytes received, in order
        self._head: bytearray | None = bytearray()  # payload bytes until the header is parsed
        self._data_start = 0
        self._spans: list[_Target] = []
        self._at = 0  # the first span not yet written whole
        self.problem: str | None = None

    @property
    def complete(self) -> bool:
        """Every byte of the payload written and judged, nothing abandoned."""
        return (
            self.problem is None
            and self._head is None
            and self._received == self.size
            and self._at == len(self._spans)
        )

    def abandon(self, why: str) -> None:
        if self.problem is None:
            self.problem = why
            log.info("%s: loaded after its read instead of during it (%s)", self.snapshot_id, why)

    def write(self, index: int, data: bytes) -> None:
        """Chunk ``index`` (its own sha256 already matched), written where its bytes go."""
        with self._lock:
            if self.problem is not None:
                return
            if not self._current(self):
                self.abandon("the standby copy was loaded another way meanwhile")
                return
            if index != self._next or self._received + len(data) > self.size:
                self.abandon(f"chunk {index} came out of order or past the payload's size")
                return
            self._next += 1
            start = self._received
            self._received += len(data)
            try:
                self._place(start, data)
            except CodecError as exc:
                self.abandon(f"payload is not safetensors: {exc}")

    def _place(self, start: int, data: bytes) -> None:
        if self._head is None:
            self._copy(start - self._data_start, memoryview(data))
            return
        self._head += data
        if len(self._head) < 8:
            return
        self._data_start = 8 + header_length(bytes(self._head[:8]), self.size)
        if len(self._head) < self._data_start:
            return
        head, self._head = self._head, None
        spans = parse_header(bytes(head[8 : self._data_start]), self.size - self._data_start)
        problem = self._misfit(spans)
        if problem is not None:
            self.abandon(problem)
            return
        self._spans = [_Target(s, self._targets[s.name]) for s in spans]
        self._copy(0, memoryview(head)[self._data_start :])

    def _misfit(self, spans: list[Span]) -> str | None:
        """Rule 3: why the payload's tensors are not byte for byte the model's, or None."""
        names = {s.name for s in spans}
        if names != set(self._targets):
            return "its tensor names are not the model's"
        for span in spans:
            target = self._targets[span.name]
            if span.dtype != target.dtype or span.shape != list(target.shape):
                return f"tensor {span.name!r} is {span.dtype} {span.shape}, not the model's"
            if target.device.type != "cpu" or not target.is_contiguous():
                return f"tensor {span.name!r} is not a contiguous CPU tensor"
        return None

    def _copy(self, offset: int, data: memoryview) -> None:
        """Bytes ``[offset, offset + len(data))`` of the data part into their tensors."""
        end = offset + len(data)
        source = np.frombuffer(data, dtype=np.uint8)
        while self._at < len(self._spans) and self.problem is None:
            each = self._spans[self._at]
            if each.span.begin == each.span.end:  # an empty tensor: nothing to write
                self._at += 1
                continue
            lo, hi = max(offset, each.span.begin), min(end, each.span.end)
            if lo >= hi:
                return  # this span starts after the chunk
            each.bytes[lo - each.span.begin : hi - each.span.begin] = source[
                lo - offset : hi - offset
            ]
            self._judge(each, (hi - each.span.begin) // each.itemsize)
            if hi < each.span.end:
                return
            self._at += 1

    def _judge(self, each: _Target, upto: int) -> None:
        """Rule 4 on the elements ``[checked, upto)`` of one tensor, now written whole: in
        blocks of ``_JUDGE_BYTES`` or at the tensor's end, so the reading thread hands the GIL
        over (torch releases it per call) a few hundred times per GB, not per chunk."""
        whole = upto == each.tensor.numel()
        if (upto - each.checked) * each.itemsize < _JUDGE_BYTES and not whole:
            return
        if each.floating and upto > each.checked:
            low, high = torch.aminmax(each.tensor[each.checked : upto])
            if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
                self.abandon(f"tensor {each.span.name!r} holds NaN or Inf")
        each.checked = max(each.checked, upto)
