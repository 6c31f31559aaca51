"""What a decoder returns, and the checks every decoded sample passes whatever its format.

Both codecs build whole-poll arrays first and call :func:`finish` once; the per-row loop in
:func:`check_rows` runs only over the rows that fail, to write their detail messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.rejects import Reject

Labels = npt.NDArray[np.int64] | npt.NDArray[np.float32]


@dataclass
class Decoded:
    """Valid samples of some records (``rows`` index the input, ascending) and the rejected
    ones, so a caller can keep record order when it cuts batches."""

    rows: npt.NDArray[np.int64]
    features: npt.NDArray[np.float32]
    labels: Labels
    weights: npt.NDArray[np.float32]
    timestamps: npt.NDArray[np.float64]
    rejects: dict[int, Reject] = field(default_factory=dict)
    sparse: SparseRows | None = None  # the spec's sparse features, None when it has none

    @classmethod
    def nothing(cls, spec: SampleSpec, rejects: dict[int, Reject] | None = None) -> Decoded:
        labels: Labels
        if spec.is_classification:
            labels = np.zeros((0,), np.int64)
        else:
            labels = np.zeros((0, spec.target_dim), np.float32)
        return cls(
            rows=np.zeros((0,), np.int64),
            features=np.zeros((0, *spec.feature_shape), np.float32),
            labels=labels,
            weights=np.zeros((0,), np.float32),
            timestamps=np.zeros((0,), np.float64),
            rejects=rejects or {},
            sparse=SparseRows.empty(spec.sparse_names) if spec.sparse else None,
        )

    def keep(self, good: npt.NDArray[np.bool_]) -> Decoded:
        return Decoded(
            rows=self.rows[good],
            features=self.features[good],
            labels=self.labels[good],
            weights=self.weights[good],
            timestamps=self.timestamps[good],
            rejects=self.rejects,
            sparse=None if self.sparse is None else self.sparse[good],
        )


def merge(spec: SampleSpec, parts: list[Decoded], rejects: dict[int, Reject]) -> Decoded:
    """One :class:`Decoded` of the samples of ``parts`` (rows of one poll, disjoint) in row
    order, with the rejects of all parts and ``rejects``."""
    for part in parts:
        rejects.update(part.rejects)
    if not parts:
        return Decoded.nothing(spec, rejects)
    if len(parts) == 1:
        parts[0].rejects = rejects
        return parts[0]
    rows = np.concatenate([p.rows for p in parts])
    order = np.argsort(rows, kind="stable")
    sparse = None
    if spec.sparse:
        pieces = [with_sparse(spec, p).sparse for p in parts]
        sparse = SparseRows.concat([s for s in pieces if s is not None])[order]
    return Decoded(
        rows=rows[order],
        features=np.concatenate([p.features for p in parts])[order],
        labels=np.concatenate([p.labels for p in parts])[order],
        weights=np.concatenate([p.weights for p in parts])[order],
        timestamps=np.concatenate([p.timestamps for p in parts])[order],
        rejects=rejects,
        sparse=sparse,
    )


def with_sparse(spec: SampleSpec, decoded: Decoded) -> Decoded:
    """``decoded`` with sparse columns when ``spec`` declares sparse features: samples of a
    format without them (binary v1) carry no IDs."""
    if spec.sparse and decoded.sparse is None:
        decoded.sparse = SparseRows.empty(spec.sparse_names, len(decoded.rows))
    return decoded


def finish(spec: SampleSpec, decoded: Decoded, record_ts: npt.NDArray[np.float64]) -> Decoded:
    """Default missing (NaN) timestamps to the record's, run :func:`check_rows`, drop the rows
    that fail it (their rejects join ``decoded.rejects``)."""
    decoded = with_sparse(spec, decoded)
    missing = np.isnan(decoded.timestamps)
    if missing.all():  # the usual poll: no sample carries its own time, one gather
        decoded.timestamps = record_ts[decoded.rows]
    elif missing.any():
        decoded.timestamps[missing] = record_ts[decoded.rows[missing]]
    bad = check_rows(spec, decoded.features, decoded.labels, decoded.weights, decoded.timestamps)
    if not bad:
        return decoded
    for row, reject in bad.items():
        decoded.rejects[int(decoded.rows[row])] = reject
    good = np.ones(len(decoded.rows), bool)
    good[list(bad)] = False
    return decoded.keep(good)


def check_rows(
    spec: SampleSpec,
    features: npt.NDArray[np.float32],
    labels: Labels,
    weights: npt.NDArray[np.float32],
    timestamps: npt.NDArray[np.float64],
) -> dict[int, Reject]:
    """Row index -> reject for rows with non-finite values, a class out of range, a negative
    weight, or an infinite timestamp or one more than a day ahead (NaN timestamps were already
    replaced). First reason wins,
    in that order."""
    n = features.shape[0]
    rejects: dict[int, Reject] = {}
    if n == 0:
        return rejects
    flat = features.reshape(n, -1)
    # One whole-array pass first: a row-wise all() is ~8x slower, and rows fail rarely.
    finite = bool(np.isfinite(flat).all())
    for row in [] if finite else np.flatnonzero(~np.isfinite(flat).all(axis=1)):
        col = int(np.flatnonzero(~np.isfinite(flat[row]))[0])
        rejects.setdefault(
            int(row), Reject("non_finite", f"features[{col}] is {flat[row, col]} (flat index)")
        )
    if spec.is_classification:
        bad = (labels < 0) | (labels >= spec.num_classes)
        for row in np.flatnonzero(bad):
            rejects.setdefault(int(row), out_of_range(int(labels[row]), spec))
    else:
        for row in np.flatnonzero(~np.isfinite(labels.reshape(n, -1)).all(axis=1)):
            rejects.setdefault(
                int(row), Reject("non_finite", f"label {labels[row].tolist()} is not finite")
            )
    for row in np.flatnonzero(~np.isfinite(weights)):
        rejects.setdefault(int(row), Reject("non_finite", f"weight is {weights[row]}"))
    for row in np.flatnonzero(weights < 0):
        rejects.setdefault(
            int(row), Reject("bad_weight", f"weight is {weights[row]}, expected a number >= 0")
        )
    for row in np.flatnonzero(np.isinf(timestamps)):
        rejects.setdefault(
            int(row),
            Reject("bad_timestamp", f"timestamp is {timestamps[row]}, expected epoch seconds"),
        )
    # The trainer's data watermark is the newest timestamp learned from, and only grows: one
    # sample from the far future (epoch milliseconds sent as seconds) would fix it there for
    # good, and every served data age would be negative from then on.
    latest = time.time() + MAX_FUTURE_S
    for row in np.flatnonzero(timestamps > latest):
        rejects.setdefault(int(row), _future(float(timestamps[row]), latest - MAX_FUTURE_S))
    return rejects


# How far ahead of the decoding process's clock a sample's timestamp may be (clock skew).
MAX_FUTURE_S = 86400.0


def _future(stamp: float, now: float) -> Reject:
    # Within ten years of now once divided by 1000: milliseconds, the usual mistake.
    millis = abs(stamp / 1000 - now) < 3.2e8
    hint = "; it looks like epoch milliseconds: divide by 1000" if millis else ""
    return Reject(
        "bad_timestamp",
        f"timestamp {stamp:.6g} is {stamp - now:.3g} s ahead of this process's clock (more than "
        f"{MAX_FUTURE_S:.0f} s); expected epoch seconds{hint}",
    )


def expected_label(spec: SampleSpec) -> str:
    """What a label of ``spec`` must be, as reject details say it."""
    if spec.task == "binary":
        return "0 or 1 (or true/false) for a binary task"
    if spec.task == "multiclass":
        return f"an int class index in [0, {spec.num_classes}) (model.num_classes)"
    if spec.target_dim == 1:
        return "a number for a regression task with target_dim=1"
    return f"a list of {spec.target_dim} numbers (model.target_dim)"


def out_of_range(label: int, spec: SampleSpec) -> Reject:
    return Reject("bad_label", f"label {label} is out of range; expected {expected_label(spec)}")
