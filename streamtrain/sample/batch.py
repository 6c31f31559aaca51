"""A decoded micro-batch: the unit that flows from ingest to the training step."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from streamtrain.sample.sparse_numpy import SparseRows

if TYPE_CHECKING:  # the kafka wing imports ingest, which imports this module
    from streamtrain.sample.record_mark import RecordMark


@dataclass(frozen=True)
class Batch:
    """Valid samples of one micro-batch plus the stream position they bring us to.

    ``next_offsets`` maps partition -> the offset of the next record to read once this batch is
    applied. It covers rejected records too, so a batch may hold zero samples and still move the
    position forward. ``marks`` holds, per partition of ``next_offsets``, the fingerprint of
    the record just before that offset (absent where none was read).

    >>> b = Batch.empty({0: 5})
    >>> b.size, b.next_offsets[0]
    (0, 5)
    """

    features: npt.NDArray[np.float32]  # [n, *feature_shape]
    labels: npt.NDArray[np.int64] | npt.NDArray[np.float32]  # [n] classes or [n, target_dim]
    weights: npt.NDArray[np.float32]  # [n]
    timestamps: npt.NDArray[np.float64]  # [n], epoch seconds
    next_offsets: Mapping[int, int] = field(default_factory=dict)
    marks: Mapping[int, RecordMark] = field(default_factory=dict)
    records: int = 0  # records consumed for this batch, rejected ones included
    sparse: SparseRows | None = None  # jagged sparse IDs per feature, None without any
    # an empty batch cut while the log held records not fetched yet (not caught up): a
    # distributed rank waits for them instead of contributing nothing to the step
    backlog: bool = False

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    @property
    def watermark(self) -> float:
        """Newest sample timestamp in the batch, NaN when it holds no sample."""
        return float(self.timestamps.max()) if self.size else math.nan

    @classmethod
    def empty(
        cls,
        next_offsets: Mapping[int, int],
        records: int = 0,
        backlog: bool = False,
        marks: Mapping[int, RecordMark] | None = None,
    ) -> Batch:
        return cls(
            features=np.zeros((0,), np.float32),
            labels=np.zeros((0,), np.int64),
            weights=np.zeros((0,), np.float32),
            timestamps=np.zeros((0,), np.float64),
            next_offsets=dict(next_offsets),
            marks=dict(marks or {}),
            records=records,
            backlog=backlog,
        )
