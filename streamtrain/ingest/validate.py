"""Vectorised checks every decoded sample must pass, whatever codec it came in.

Both codecs build whole-poll arrays first and call :func:`check_rows` once; the per-row loop
runs only over the rows that fail, to write their detail messages.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtrain.schema import Reject
from streamtrain.spec import SampleSpec

Labels = npt.NDArray[np.int64] | npt.NDArray[np.float32]


def check_rows(
    spec: SampleSpec,
    features: npt.NDArray[np.float32],
    labels: Labels,
    weights: npt.NDArray[np.float32],
    timestamps: npt.NDArray[np.float64],
) -> dict[int, Reject]:
    """Row index -> reject for rows with non-finite values, a class out of range, a negative
    weight or an infinite timestamp (NaN timestamps were already replaced). First reason wins,
    in that order."""
    n = features.shape[0]
    rejects: dict[int, Reject] = {}
    if n == 0:
        return rejects
    flat = features.reshape(n, -1)
    for row in np.flatnonzero(~np.isfinite(flat).all(axis=1)):
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
    return rejects


def expected_label(spec: SampleSpec) -> str:
    if spec.task == "binary":
        return "0 or 1 (or true/false) for a binary task"
    if spec.task == "multiclass":
        return f"an int class index in [0, {spec.num_classes}) (model.num_classes)"
    if spec.target_dim == 1:
        return "a number for a regression task with target_dim=1"
    return f"a list of {spec.target_dim} numbers (model.target_dim)"


def out_of_range(label: int, spec: SampleSpec) -> Reject:
    return Reject("bad_label", f"label {label} is out of range; expected {expected_label(spec)}")


def class_label(label: Any, spec: SampleSpec) -> int | Reject:
    """One JSON class label as an int in range, or why it is not one."""
    kind = type(label)
    if kind is int:
        value = int(label)
    elif kind is bool:
        if spec.task != "binary":
            return Reject("bad_label", f"label is {label!r}; expected {expected_label(spec)}")
        value = int(label)
    elif kind is float:
        if not math.isfinite(label):
            return Reject("non_finite", f"label is {label}")
        if not label.is_integer():
            return Reject(
                "bad_label", f"label {label} is not a class; expected {expected_label(spec)}"
            )
        value = int(label)
    else:
        value = -1
    if kind in (int, bool, float):
        return value if 0 <= value < spec.num_classes else out_of_range(value, spec)
    if label is None:
        return Reject("bad_label", f"label is missing; expected {expected_label(spec)}")
    return Reject("bad_label", f"label is a {_json_type(label)}; expected {expected_label(spec)}")


def regression_label(label: Any, spec: SampleSpec) -> list[Any] | Reject:
    """One JSON regression label as a list to stack (element types checked in bulk later)."""
    kind = type(label)
    if kind is int or kind is float:
        if spec.target_dim == 1:
            return [label]
        return Reject("bad_label", f"label is a number; expected {expected_label(spec)}")
    if kind is list:
        return label  # type: ignore[no-any-return]
    if label is None:
        return Reject("bad_label", f"label is missing; expected {expected_label(spec)}")
    return Reject("bad_label", f"label is a {_json_type(label)}; expected {expected_label(spec)}")


def optional_number(value: Any, default: float) -> float | None:
    """A JSON number (not a boolean), ``default`` when absent, None when of the wrong type."""
    if value is None:
        return default
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    return None


def _json_type(value: Any) -> str:
    names = {str: "string", list: "list", dict: "object", bool: "boolean"}
    return names.get(type(value), type(value).__name__)
