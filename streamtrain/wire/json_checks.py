"""JSON records the typed decoder refused, read one by one with the standard library.

The typed decoder (:mod:`streamtrain.wire.json_format`) takes the usual record in C; a record
it refuses comes here, to be either accepted by the wire format's more lenient rules (an
integral float ``2.0`` as a class, booleans mixed into features) or rejected with a detail
that says what was expected. Rejects are rare, so this path may be slow.
"""

from __future__ import annotations

import codecs
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.decoded import expected_label, out_of_range
from streamtrain.wire.rejects import Reject, shape_text

# UTF-32 LE starts with the UTF-16 LE mark, so it is looked for first.
_BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32 LE"),
    (codecs.BOM_UTF32_BE, "UTF-32 BE"),
    (codecs.BOM_UTF8, "UTF-8"),
    (codecs.BOM_UTF16_LE, "UTF-16 LE"),
    (codecs.BOM_UTF16_BE, "UTF-16 BE"),
)
_UTF8_ONLY = "encode the JSON as UTF-8 without a byte-order mark"

# features, label (an int class or a list of floats to stack), weight, timestamp (NaN: none),
# and the raw sparse / sparse_weights values (checked by sparse_fields.read_sparse)
Fields = tuple[Any, Any, float, float, Any, Any]


def utf8_text(value: bytes) -> str | Reject:
    """``value`` as text when it is UTF-8 without a byte-order mark (the wire format's only
    encoding), else why not. ``json.loads`` alone would also accept UTF-16 and UTF-32."""
    for mark, name in _BYTE_ORDER_MARKS:
        if value.startswith(mark):
            return Reject(
                "undecodable",
                f"not valid UTF-8 JSON: starts with a {name} byte-order mark; " + _UTF8_ONLY,
            )
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(
            "undecodable",
            f"not valid UTF-8 JSON: byte {exc.object[exc.start]:#04x} at position {exc.start} "
            f"is not UTF-8 ({exc.reason}); {_UTF8_ONLY}",
        )


def read_record(spec: SampleSpec, value: bytes) -> Fields | Reject:
    """One JSON record value as its fields, or why it is not a sample. Element types and
    shapes of features (and regression labels) are checked later, in bulk."""
    text = utf8_text(value)
    if isinstance(text, Reject):
        return text
    try:
        obj = json.loads(text)
    except ValueError as exc:
        hint = " (UTF-16 or UTF-32 without a byte-order mark?)" if "\x00" in text else ""
        return Reject("undecodable", f"not valid UTF-8 JSON: {exc}{hint}")
    except RecursionError:
        return Reject(
            "undecodable",
            "not valid UTF-8 JSON: nested too deeply to read (features nest "
            f"{len(spec.feature_shape)} level(s) deep for model.input_shape "
            f"{shape_text(spec.feature_shape)})",
        )
    if type(obj) is not dict:
        return Reject("undecodable", 'expected a JSON object {"features": [...], "label": ...}')
    f = obj.get("features")
    if type(f) is not list:
        what = "missing" if f is None else f"a {type(f).__name__}, not a list"
        return Reject(
            "bad_shape",
            f"features is {what}; expected numbers shaped "
            f"{shape_text(spec.feature_shape)} (model.input_shape)",
        )
    label = (
        class_label(obj.get("label"), spec)
        if spec.is_classification
        else regression_label(obj.get("label"), spec)
    )
    if isinstance(label, Reject):
        return label
    weight = optional_number(obj.get("weight"), 1.0)
    if weight is None:
        return Reject("bad_weight", f"weight is {obj['weight']!r}, expected a number")
    stamp = optional_number(obj.get("timestamp"), math.nan)
    if stamp is None:
        return Reject("bad_timestamp", f"timestamp is {obj['timestamp']!r}, expected epoch seconds")
    return f, label, weight, stamp, obj.get("sparse"), obj.get("sparse_weights")


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


def _json_type(value: Any) -> str:
    names = {str: "string", list: "list", dict: "object", bool: "boolean"}
    return names.get(type(value), type(value).__name__)
