"""What the prediction log keeps of one answered request: its records.

A request is logged as one :class:`ServedBatch` (the arrays it was answered with, no copy);
the writer thread turns it into one prediction-log record per row
(:mod:`streamtrain.wire.prediction_record`), so the request path never encodes anything.

A request of one row is logged under its id (the rules for that id are the request path's:
:mod:`streamtrain.serve.protocol.request_ids`); a request of ``n > 1`` rows logs ``n``
records with ids ``"<id>/0"`` ... ``"<id>/<n-1>"``, so each row can get its own label.

>>> from streamtrain.sample.spec import SampleSpec
>>> spec = SampleSpec((2,), "binary")
>>> batch = ServedBatch("req-7", 5.0, 3, "run-a", np.ones((2, 2), np.float32),
...                     np.full((2, 2), 0.5, np.float32), None)
>>> [key for key, _ in encode_served(spec, [batch])]
[b'req-7/0', b'req-7/1']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import encode_binary_many, encode_binary_v2
from streamtrain.wire.prediction_record import (
    Arm,
    PredictionRecord,
    encode_prediction,
)

Array = np.ndarray[Any, Any]


def row_ids(request_id: str, rows: int) -> list[str]:
    """The logged id of each row: the request id itself for one row, else ``<id>/<row>``."""
    if rows == 1:
        return [request_id]
    return [f"{request_id}/{row}" for row in range(rows)]


@dataclass(frozen=True, slots=True)
class ServedBatch:
    """One answered request as the log keeps it until the writer thread encodes it."""

    request_id: str
    served_at: float  # epoch seconds
    version: int
    run_id: str
    features: Array  # float32 [n, *feature_shape]: exactly the tensor the model was given
    outputs: Array  # float32 [n, k]: the logged output row of each sample
    sparse: SparseRows | None
    arm: Arm = "live"  # the traffic-split arm (serve/protocol/split.py)

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def encode_served(spec: SampleSpec, batches: Sequence[ServedBatch]) -> list[tuple[bytes, bytes]]:
    """(key, value) of every row's prediction-log record, batch after batch, in row order.

    The served samples of a dense model are encoded in one vectorised pass over every row of
    ``batches``: per record that costs a fraction of encoding requests one at a time.
    """
    samples = _samples(spec, batches)
    records = []
    at = 0
    for batch in batches:
        outputs = batch.outputs.reshape(batch.rows, -1).tolist()
        for rid, out in zip(row_ids(batch.request_id, batch.rows), outputs, strict=True):
            record = PredictionRecord(
                rid,
                batch.served_at,
                batch.version,
                batch.run_id,
                tuple(out),
                samples[at],
                batch.arm,
            )
            records.append((rid.encode(), encode_prediction(record)))
            at += 1
    return records


def _samples(spec: SampleSpec, batches: Sequence[ServedBatch]) -> list[bytes]:
    """Each row as a binary sample (label zero, weight 1, timestamp = served_at): layout v1
    in one pass, or v2 with the row's sparse IDs for a model that declares them."""
    if spec.sparse:
        return [value for batch in batches for value in _sparse_samples(spec, batch)]
    rows = [batch.rows for batch in batches]
    n = sum(rows)
    features = (
        batches[0].features
        if len(batches) == 1
        else np.concatenate([batch.features for batch in batches])
    )
    stamps = np.repeat(np.array([batch.served_at for batch in batches], np.float64), rows)
    return encode_binary_many(spec, features, _zero_labels(spec, n), None, stamps)


def _zero_labels(spec: SampleSpec, n: int) -> Array:
    if spec.is_classification:
        return np.zeros(n, np.int64)
    return np.zeros((n, spec.target_dim), np.float32)


def _sparse_samples(spec: SampleSpec, batch: ServedBatch) -> list[bytes]:
    labels = _zero_labels(spec, batch.rows)
    columns = {}
    if batch.sparse is not None:
        columns = {name: (j.ids, j.offsets, j.weights) for name, j in batch.sparse.features.items()}
    values = []
    for i in range(batch.rows):
        ids = {name: c[0][c[1][i] : c[1][i + 1]] for name, c in columns.items()}
        weights = {name: c[2][c[1][i] : c[1][i + 1]] for name, c in columns.items()}
        # A feature without per-ID weights decodes with weight 1: leave unit weights out.
        weights = {name: w for name, w in weights.items() if not (w == 1.0).all()}
        values.append(
            encode_binary_v2(spec, batch.features[i], labels[i], 1.0, batch.served_at, ids, weights)
        )
    return values
