"""Bulk decoders: a poll's worth of record values to arrays plus per-record rejects.

Both decoders take the values of one codec and the Kafka timestamps of those records, and
return a :class:`Decoded` whose ``rows`` say which input positions became samples (ascending),
so the caller can keep record order when it cuts batches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtrain.ingest.validate import (
    Labels,
    check_rows,
    class_label,
    optional_number,
    regression_label,
)
from streamtrain.schema import BINARY_MAGIC, Reject, binary_dtype, shape_text
from streamtrain.spec import SampleSpec


@dataclass
class Decoded:
    """Valid samples of some records (``rows`` index the input) and the rejected ones."""

    rows: npt.NDArray[np.int64]
    features: npt.NDArray[np.float32]
    labels: Labels
    weights: npt.NDArray[np.float32]
    timestamps: npt.NDArray[np.float64]
    rejects: dict[int, Reject] = field(default_factory=dict)

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
        )

    def keep(self, good: npt.NDArray[np.bool_]) -> Decoded:
        return Decoded(
            rows=self.rows[good],
            features=self.features[good],
            labels=self.labels[good],
            weights=self.weights[good],
            timestamps=self.timestamps[good],
            rejects=self.rejects,
        )


def _finish(spec: SampleSpec, decoded: Decoded, record_ts: npt.NDArray[np.float64]) -> Decoded:
    """Default missing timestamps, run the numeric checks, drop the rows that fail them."""
    missing = np.isnan(decoded.timestamps)
    decoded.timestamps[missing] = record_ts[decoded.rows[missing]]
    bad = check_rows(spec, decoded.features, decoded.labels, decoded.weights, decoded.timestamps)
    if not bad:
        return decoded
    for row, reject in bad.items():
        decoded.rejects[int(decoded.rows[row])] = reject
    good = np.ones(len(decoded.rows), bool)
    good[list(bad)] = False
    return decoded.keep(good)


def decode_binary(
    spec: SampleSpec, values: Sequence[bytes], record_ts: npt.NDArray[np.float64]
) -> Decoded:
    """Decode binary layout v1 values: one ``frombuffer`` over every value of the right size."""
    dtype = binary_dtype(spec)
    size = dtype.itemsize
    rejects: dict[int, Reject] = {}
    right = [i for i, v in enumerate(values) if len(v) == size]
    if len(right) != len(values):
        label = "int64 class" if spec.is_classification else f"{spec.target_dim} x float32"
        for i, v in enumerate(values):
            if len(v) != size:
                rejects[i] = Reject(
                    "bad_shape",
                    f"binary sample is {len(v)} bytes, expected {size} (layout v1: 16-byte "
                    f"header, {label} label, {spec.feature_size} x float32 features for shape "
                    f"{shape_text(spec.feature_shape)} (model.input_shape))",
                )
        buf = b"".join(values[i] for i in right)
    else:
        buf = b"".join(values)
    if not right:
        return Decoded.nothing(spec, rejects)
    arr = np.frombuffer(buf, dtype=dtype)
    rows = np.asarray(right, dtype=np.int64)
    magic_ok = arr["magic"] == BINARY_MAGIC
    if not magic_ok.all():
        for j in np.flatnonzero(~magic_ok):
            rejects[int(rows[j])] = Reject(
                "undecodable",
                f"binary sample starts with {bytes(arr['magic'][j])!r}, expected {BINARY_MAGIC!r}",
            )
        arr, rows = arr[magic_ok], rows[magic_ok]
    labels: Labels
    if spec.is_classification:
        labels = arr["label"].astype(np.int64)
    else:
        labels = arr["label"].astype(np.float32)
    decoded = Decoded(
        rows=rows,
        features=arr["features"].reshape(len(arr), *spec.feature_shape).astype(np.float32),
        labels=labels,
        weights=arr["weight"].astype(np.float32),
        timestamps=arr["timestamp"].astype(np.float64),
        rejects=rejects,
    )
    return _finish(spec, decoded, record_ts)


def decode_json(
    spec: SampleSpec, values: Sequence[bytes], record_ts: npt.NDArray[np.float64]
) -> Decoded:
    """Decode JSON values: ``json.loads`` and cheap type checks per record, then one array per
    field for the whole poll and vectorised checks."""
    rejects: dict[int, Reject] = {}
    rows: list[int] = []
    feats: list[Any] = []
    labels: list[Any] = []
    weights: list[float] = []
    stamps: list[float] = []
    classify = spec.is_classification
    for i, value in enumerate(values):
        try:
            obj = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            rejects[i] = Reject("undecodable", f"not valid UTF-8 JSON: {exc}")
            continue
        if type(obj) is not dict:
            rejects[i] = Reject(
                "undecodable", 'expected a JSON object {"features": [...], "label": ...}'
            )
            continue
        f = obj.get("features")
        if type(f) is not list:
            what = "missing" if f is None else f"a {type(f).__name__}, not a list"
            rejects[i] = Reject(
                "bad_shape",
                f"features is {what}; expected numbers shaped "
                f"{shape_text(spec.feature_shape)} (model.input_shape)",
            )
            continue
        label = (
            class_label(obj.get("label"), spec)
            if classify
            else regression_label(obj.get("label"), spec)
        )
        if isinstance(label, Reject):
            rejects[i] = label
            continue
        weight = optional_number(obj.get("weight"), 1.0)
        if weight is None:
            rejects[i] = Reject("bad_weight", f"weight is {obj['weight']!r}, expected a number")
            continue
        stamp = optional_number(obj.get("timestamp"), float("nan"))
        if stamp is None:
            rejects[i] = Reject(
                "bad_timestamp", f"timestamp is {obj['timestamp']!r}, expected epoch seconds"
            )
            continue
        rows.append(i)
        feats.append(f)
        labels.append(label)
        weights.append(weight)
        stamps.append(stamp)
    if not rows:
        return Decoded.nothing(spec, rejects)
    row_arr = np.asarray(rows, dtype=np.int64)
    feat_arr, feat_bad = stack_numbers(feats, spec.feature_shape, "features", "model.input_shape")
    good = np.ones(len(rows), bool)
    for j, reject in feat_bad.items():
        rejects[rows[j]] = reject
        good[j] = False
    label_arr: Labels
    if classify:
        label_arr = np.asarray(labels, dtype=np.int64)
    else:
        label_arr, label_bad = stack_numbers(
            labels, (spec.target_dim,), "label", "model.target_dim"
        )
        for j, reject in label_bad.items():
            if good[j]:
                rejects[rows[j]] = reject
                good[j] = False
    with np.errstate(over="ignore"):
        weight_arr = np.asarray(weights, dtype=np.float32)
    decoded = Decoded(
        rows=row_arr,
        features=feat_arr,
        labels=label_arr,
        weights=weight_arr,
        timestamps=np.asarray(stamps, dtype=np.float64),
        rejects=rejects,
    )
    if not good.all():
        decoded = decoded.keep(good)
    return _finish(spec, decoded, record_ts)


def stack_numbers(
    values: list[Any], shape: tuple[int, ...], name: str, setting: str
) -> tuple[npt.NDArray[np.float32], dict[int, Reject]]:
    """Stack nested number lists into float32 ``[n, *shape]``; bad rows hold zeros and are
    returned with their reject. One ``np.array`` call when every row fits (the usual case)."""
    n = len(values)
    with np.errstate(over="ignore"):
        try:
            arr = np.array(values)
            if arr.dtype.kind in "iuf" and arr.shape == (n, *shape):
                return arr.astype(np.float32), {}
        except (ValueError, TypeError, OverflowError):
            pass
        out = np.zeros((n, *shape), np.float32)
        bad: dict[int, Reject] = {}
        for j, value in enumerate(values):
            try:
                row = np.array(value)
            except (ValueError, TypeError, OverflowError):
                bad[j] = Reject(
                    "bad_shape",
                    f"{name} is ragged (nested lists of unequal length); expected "
                    f"{shape_text(shape)} ({setting})",
                )
                continue
            if row.dtype.kind not in "iuf":
                bad[j] = Reject(
                    "bad_shape",
                    f"{name} must hold only numbers, got {_element_kind(row)}; expected "
                    f"{shape_text(shape)} ({setting})",
                )
            elif row.shape != shape:
                bad[j] = Reject(
                    "bad_shape",
                    f"{name} has shape {shape_text(row.shape)}, expected {shape_text(shape)} "
                    f"({setting})",
                )
            else:
                out[j] = row
    return out, bad


def _element_kind(row: npt.NDArray[Any]) -> str:
    return {"U": "strings", "b": "booleans", "O": "nulls or mixed values"}.get(
        row.dtype.kind, str(row.dtype)
    )
