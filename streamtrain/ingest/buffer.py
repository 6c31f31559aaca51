"""Decoded records waiting to be handed out, and the exact cut of one batch from them.

Cutting invariant (the trainer's exactly-once recovery depends on it):

1. A batch takes records strictly in consumed order, valid and rejected alike.
2. When the buffer holds more valid samples than the batch may take, the batch ends right
   after the record of its last sample; every later record stays buffered.
3. ``next_offsets`` holds, for every partition the batch took a record from, that record's
   offset + 1; so the model state after a batch plus its ``next_offsets`` name the exact
   stream position. ``marks`` holds that record's fingerprint, so a checkpoint of the position
   can later tell whether the log is still the one read (:mod:`streamtrain.ingest.log_watch`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from streamtrain.ingest.decode import DecodedChunk
from streamtrain.kafka.records import KafkaRecord, last_per_partition
from streamtrain.sample.batch import Batch
from streamtrain.sample.record_mark import RecordMark, mark_of
from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.wire import Reject


@dataclass
class _Cursor:
    chunk: DecodedChunk
    record: int = 0  # first record of the chunk not yet handed out
    sample: int = 0  # first sample of the chunk not yet handed out


class BatchBuffer:
    """FIFO of decoded chunks with per-chunk cursors; :meth:`cut` takes one batch."""

    def __init__(self) -> None:
        self._chunks: deque[_Cursor] = deque()
        self._samples = 0
        self._records = 0

    @property
    def samples(self) -> int:
        """Valid samples buffered."""
        return self._samples

    @property
    def records(self) -> int:
        """Records buffered, rejected ones included."""
        return self._records

    def add(self, chunk: DecodedChunk) -> None:
        if len(chunk.records):
            self._chunks.append(_Cursor(chunk))
            self._samples += len(chunk.sample_records)
            self._records += len(chunk.records)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget buffered records of ``partitions`` (after a seek on them)."""
        dropped = set(partitions)
        kept: deque[_Cursor] = deque()
        self._samples = self._records = 0
        for cursor in self._chunks:
            chunk = cursor.chunk
            rec_keep = ~np.isin(chunk.partitions, list(dropped))
            rec_keep[: cursor.record] = False
            if not rec_keep.any():
                continue
            sample_keep = rec_keep[chunk.sample_records]
            decoded = chunk.decoded.keep(sample_keep)
            index = np.flatnonzero(rec_keep)
            remap = np.cumsum(rec_keep) - 1
            decoded.rows = remap[decoded.rows]
            decoded.rejects = {int(remap[i]): r for i, r in decoded.rejects.items() if rec_keep[i]}
            records = [chunk.records[int(i)] for i in index]
            new = DecodedChunk(records, chunk.partitions[index], chunk.offsets[index], decoded)
            kept.append(_Cursor(new))
            self._samples += len(decoded.rows)
            self._records += len(records)
        self._chunks = kept

    def cut(self, max_samples: int) -> tuple[Batch, list[tuple[KafkaRecord, Reject]]] | None:
        """Take up to ``max_samples`` samples and the records up to the last one taken (all
        buffered records when fewer samples are buffered). Returns the batch and the rejected
        records it consumed with their rejects, or None when nothing is buffered."""
        if not self._chunks:
            return None
        pieces = []
        sparse_pieces: list[SparseRows] = []
        rejected: list[tuple[KafkaRecord, Reject]] = []
        next_offsets: dict[int, int] = {}
        marks: dict[int, RecordMark] = {}
        # Not full: hand out everything, trailing rejects included. Full: stop right after
        # the record of the last sample taken (invariant 2).
        need = max_samples if self._samples >= max_samples else self._samples + 1
        records = 0
        while self._chunks and need > 0:
            cursor = self._chunks[0]
            chunk = cursor.chunk
            rows = chunk.sample_records
            available = len(rows) - cursor.sample
            if available >= need:
                take_samples = need
                end_record = int(rows[cursor.sample + need - 1]) + 1
            else:
                take_samples = available
                end_record = len(chunk.records)
            s0, s1 = cursor.sample, cursor.sample + take_samples
            r0, r1 = cursor.record, end_record
            d = chunk.decoded
            pieces.append(
                (d.features[s0:s1], d.labels[s0:s1], d.weights[s0:s1], d.timestamps[s0:s1])
            )
            if d.sparse is not None:
                sparse_pieces.append(d.sparse[s0:s1])
            if d.rejects:
                rejected.extend(
                    (chunk.records[i], d.rejects[i]) for i in sorted(d.rejects) if r0 <= i < r1
                )
            _note_next(next_offsets, marks, chunk, r0, r1)
            records += r1 - r0
            need -= take_samples
            self._samples -= take_samples
            self._records -= r1 - r0
            if r1 >= len(chunk.records):
                self._chunks.popleft()
            else:
                cursor.record, cursor.sample = r1, s1
        batch = Batch(
            features=_cat([p[0] for p in pieces]),
            labels=_cat([p[1] for p in pieces]),
            weights=_cat([p[2] for p in pieces]),
            timestamps=_cat([p[3] for p in pieces]),
            next_offsets=next_offsets,
            marks=marks,
            records=records,
            sparse=SparseRows.concat(sparse_pieces) if sparse_pieces else None,
        )
        return batch, rejected


def _note_next(
    next_offsets: dict[int, int],
    marks: dict[int, RecordMark],
    chunk: DecodedChunk,
    r0: int,
    r1: int,
) -> None:
    """Record each partition's last offset + 1 and that record's mark (invariant 3), for
    records ``r0:r1`` of ``chunk``; one partition needs no sort."""
    for p, last in last_per_partition(chunk.partitions[r0:r1]).items():
        next_offsets[p] = int(chunk.offsets[r0 + last]) + 1
        marks[p] = mark_of(chunk.records[r0 + last])


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
