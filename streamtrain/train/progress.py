"""Where training stands, when it stops and how it stopped, shared by the single-process and
the multi-rank trainer."""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class StopConditions:
    max_samples: int | None = None  # stop once the model has learned from this many samples
    stop_when_idle: float | None = None  # stop after this many seconds without any record


@dataclass
class TrainSummary:
    """How a run stopped: ``step`` and ``samples_seen`` count the whole run (restored from the
    checkpoint); ``optimizer_updates`` and ``records_rejected`` this process only."""

    steps: int
    samples_seen: int
    run_id: str
    stop_reason: str
    elapsed_seconds: float
    resumed_from_step: int | None = None
    rolling_loss: float = math.nan
    rolling_score: float = math.nan  # accuracy for classification, MAE for regression
    optimizer_updates: int = 0
    records_rejected: int = 0
    score_name: str = "accuracy"
