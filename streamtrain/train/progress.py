"""Where training stands, shared by the single-process and the multi-rank trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from streamtrain.sample.batch import Batch
from streamtrain.sample.record_mark import RecordMark


@dataclass
class TrainProgress:
    """Where training stands: steps taken, samples learned, next offsets, data watermark
    (shared with :class:`~streamtrain.distributed.lockstep.LockstepTrainer`)."""

    step: int = 0
    samples_seen: int = 0
    offsets: dict[int, int] = field(default_factory=dict)
    watermark: float | None = None
    marks: dict[int, RecordMark] = field(default_factory=dict)  # of the records before offsets

    def advance(self, batch: Batch) -> None:
        """Move to the position ``batch`` brings the stream to (its fingerprints included)."""
        self.offsets.update(batch.next_offsets)
        for p in batch.next_offsets:
            mark = batch.marks.get(p)
            if mark is None:
                self.marks.pop(p, None)
            else:
                self.marks[p] = mark
