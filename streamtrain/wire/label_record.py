"""One delayed label on the labels topic, and the joined sample it completes.

An application that learns an outcome later sends it keyed by the request id the server
returned (``docs/labels.md``). The record key should be that id (so labels land on the same
partition as the prediction-log records they complete); the value is JSON or binary:

JSON (no ``content-type``, or ``application/json``)::

    {"id": "req-1", "label": 1, "weight": 1.0, "timestamp": 1700000000.5}

``id`` may be left out when the key carries it; when both are present they must agree.
``label`` follows the sample rules (class index, ``true``/``false`` for binary, a number or
``target_dim`` numbers for regression); ``weight`` (default 1) and ``timestamp`` (epoch
seconds, default the Kafka record timestamp) are optional.

Binary (``application/x-streamtrain-label``), little-endian, packed::

    offset  size        field
    0       4           magic b"STL1"
    4       8           timestamp, float64 epoch seconds (NaN = the Kafka record timestamp)
    12      4           weight, float32
    16      8 | 4*T     label: int64 class index, or float32 x target_dim
    ..      rest        request id, UTF-8 (1..256 bytes)

:func:`with_label` writes a label into a served sample (binary v1/v2) without touching its
feature bytes: that is how the join keeps training features bit-identical to served ones.

>>> from streamtrain.sample.spec import SampleSpec
>>> spec = SampleSpec(feature_shape=(2,), task="binary")
>>> decode_label(spec, encode_label_json("req-1", 1), None, b"req-1", 5.0)
LabelRecord(request_id='req-1', label=1, weight=1.0, timestamp=5.0)
>>> binary = encode_label_binary(spec, "req-1", 0)
>>> decode_label(spec, binary, LABEL_CONTENT_TYPE.encode(), None, 5.0)
LabelRecord(request_id='req-1', label=0, weight=1.0, timestamp=5.0)
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import numpy as np

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.binary_format import BINARY_MAGIC
from streamtrain.wire.binary_v2 import BINARY_MAGIC_V2
from streamtrain.wire.decoded import MAX_FUTURE_S
from streamtrain.wire.json_checks import class_label, optional_number, regression_label
from streamtrain.wire.prediction_record import PredictionRecordError, check_request_id
from streamtrain.wire.rejects import RecordError

LABEL_CONTENT_TYPE = "application/x-streamtrain-label"
LABEL_MAGIC = b"STL1"
_HEAD = struct.Struct("<4sdf")
_FIXED_SAMPLE_HEAD = struct.Struct("<df")  # timestamp and weight at offset 4 of a sample

LabelReason = Literal[
    "undecodable",  # not UTF-8 JSON / not an object / wrong magic / too short / tombstone
    "bad_id",  # missing, empty, over 256 bytes, or different from the record key
    "bad_label",  # missing, of the wrong type, or out of range
    "non_finite",  # NaN or Inf in the label or weight
    "bad_weight",  # negative or not a number
    "bad_timestamp",  # not a finite number
    "unknown_content_type",  # neither JSON nor the binary label type
]

Label = int | tuple[float, ...]
"""A class index, or ``target_dim`` floats for regression."""


class LabelError(RecordError[LabelReason]):
    """A labels-topic record that is not a valid label; ``reason`` and ``detail`` say why."""


@dataclass(frozen=True)
class LabelRecord:
    """One decoded label: which request it completes, the outcome and its weight."""

    request_id: str
    label: Label
    weight: float
    timestamp: float
    """Epoch seconds the label was produced (the record's own, else its Kafka timestamp)."""


def encode_label_json(
    request_id: str, label: Any, weight: float = 1.0, timestamp: float | None = None
) -> bytes:
    """The JSON record value of one label (send it with the request id as key)."""
    doc: dict[str, Any] = {"id": request_id, "label": label}
    if weight != 1.0:
        doc["weight"] = weight
    if timestamp is not None:
        doc["timestamp"] = timestamp
    return msgspec.json.encode(doc)


def encode_label_binary(
    spec: SampleSpec,
    request_id: str,
    label: Any,
    weight: float = 1.0,
    timestamp: float = math.nan,
) -> bytes:
    """The binary (``STL1``) record value of one label."""
    rid = _checked_id(request_id)
    head = _HEAD.pack(LABEL_MAGIC, timestamp, weight)
    return head + _label_bytes(spec, label) + rid


def decode_label(
    spec: SampleSpec,
    value: bytes | None,
    content_type: bytes | None,
    key: bytes | None,
    record_ts: float,
) -> LabelRecord:
    """Read and check one labels-topic record; LabelError says what is wrong and how to fix it."""
    kind = (content_type or b"application/json").split(b";")[0].strip().lower()
    if kind == LABEL_CONTENT_TYPE.encode():
        record = _decode_binary(spec, value or b"", record_ts)
    elif kind == b"application/json":
        record = _decode_json(spec, value or b"", key, record_ts)
    else:
        raise LabelError(
            "unknown_content_type",
            f"content-type {kind.decode(errors='replace')!r}; send application/json or "
            f"{LABEL_CONTENT_TYPE}",
        )
    if key is not None and key != record.request_id.encode():
        raise LabelError(
            "bad_id",
            f"record key {key[:64].decode(errors='replace')!r} differs from id "
            f"{record.request_id[:64]!r}; key each label by its request id",
        )
    return record


def with_label(spec: SampleSpec, sample: bytes, label: Label, weight: float, ts: float) -> bytes:
    """The served ``sample`` (binary v1/v2) with ``label``, ``weight`` and timestamp ``ts``
    written in; every other byte, features and sparse IDs included, is kept as it was."""
    if sample[:4] not in (BINARY_MAGIC, BINARY_MAGIC_V2):
        raise ValueError(f"served sample has magic {sample[:4]!r}, not a binary sample")
    out = bytearray(sample)
    _FIXED_SAMPLE_HEAD.pack_into(out, 4, ts, weight)
    raw = _label_bytes(spec, label)
    out[16 : 16 + len(raw)] = raw
    return bytes(out)


def _label_bytes(spec: SampleSpec, label: Any) -> bytes:
    if spec.is_classification:
        return np.asarray([label], "<i8").tobytes()
    return np.asarray(label, "<f4").reshape(spec.target_dim).tobytes()


def _checked_id(request_id: str) -> bytes:
    try:
        return check_request_id(request_id)
    except PredictionRecordError as exc:
        raise LabelError("bad_id", exc.detail) from None


def _decode_json(
    spec: SampleSpec, value: bytes, key: bytes | None, record_ts: float
) -> LabelRecord:
    try:
        doc = msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise LabelError("undecodable", f"not a JSON label: {exc}") from None
    except RecursionError:  # arrays nested thousands deep: it escaped the join's handling
        raise LabelError(
            "undecodable", 'not a JSON label: nested too deeply; send {"id": "...", "label": 1}'
        ) from None
    if not isinstance(doc, dict):
        raise LabelError("undecodable", 'expected a JSON object such as {"id": "...", "label": 1}')
    rid = doc.get("id")
    if rid is None and key is not None:
        try:
            rid = key.decode()
        except UnicodeDecodeError:
            raise LabelError("bad_id", "record key is not UTF-8 and the value has no id") from None
    if not isinstance(rid, str):
        raise LabelError("bad_id", 'missing "id": send the request id the server returned')
    _checked_id(rid)
    label = _json_label(spec, doc.get("label"))
    weight = optional_number(doc.get("weight"), 1.0)
    if weight is None or weight < 0:
        raise LabelError("bad_weight", f"weight is {doc.get('weight')!r}; expected a number >= 0")
    if not math.isfinite(weight):
        raise LabelError("non_finite", f"weight is {weight}")
    stamp = optional_number(doc.get("timestamp"), record_ts)
    if stamp is None or not math.isfinite(stamp):
        raise LabelError("bad_timestamp", f"timestamp is {doc.get('timestamp')!r}")
    _not_ahead(stamp)
    return LabelRecord(rid, label, float(weight), float(stamp))


def _not_ahead(stamp: float) -> None:
    """The label's time becomes the joined sample's, which the trainer refuses more than a
    day ahead (``wire.decoded``): refused here already, where the label is dead-lettered."""
    if stamp > time.time() + MAX_FUTURE_S:
        raise LabelError(
            "bad_timestamp",
            f"timestamp {stamp:.6g} is more than {MAX_FUTURE_S:.0f} s ahead of this process's "
            "clock; expected epoch seconds (milliseconds divided by 1000)",
        )


def _json_label(spec: SampleSpec, raw: Any) -> Label:
    if spec.is_classification:
        got = class_label(raw, spec)
        if isinstance(got, int):
            return got
        raise LabelError(_reason(got.reason), got.detail)
    row = regression_label(raw, spec)
    if not isinstance(row, list):
        raise LabelError(_reason(row.reason), row.detail)
    if len(row) != spec.target_dim or not all(type(x) in (int, float) for x in row):
        raise LabelError("bad_label", f"label is {row!r}; expected {spec.target_dim} numbers")
    if not all(math.isfinite(x) for x in row):
        raise LabelError("non_finite", f"label is {row!r}")
    return tuple(float(np.float32(x)) for x in row)


def _reason(reason: str) -> LabelReason:
    return "non_finite" if reason == "non_finite" else "bad_label"


def _decode_binary(spec: SampleSpec, value: bytes, record_ts: float) -> LabelRecord:
    width = 8 if spec.is_classification else 4 * spec.target_dim
    fixed = _HEAD.size + width
    if len(value) < fixed + 1:
        raise LabelError(
            "undecodable",
            f"binary label is {len(value)} bytes; expected {fixed} plus a 1-256 byte id",
        )
    magic, stamp, weight = _HEAD.unpack_from(value)
    if magic != LABEL_MAGIC:
        raise LabelError("undecodable", f"magic is {magic!r}; expected {LABEL_MAGIC!r}")
    try:
        rid = value[fixed:].decode()
    except UnicodeDecodeError:
        raise LabelError("bad_id", "request id is not UTF-8") from None
    _checked_id(rid)
    if not math.isfinite(weight):
        raise LabelError("non_finite", f"weight is {weight}")
    if weight < 0:
        raise LabelError("bad_weight", f"weight is {weight}; expected a number >= 0")
    if math.isnan(stamp):
        stamp = record_ts
    elif not math.isfinite(stamp):
        raise LabelError("bad_timestamp", f"timestamp is {stamp}")
    _not_ahead(stamp)
    raw = value[_HEAD.size : fixed]
    label: Label
    if spec.is_classification:
        label = int(np.frombuffer(raw, "<i8")[0])
        if not 0 <= label < spec.num_classes:
            raise LabelError("bad_label", f"label {label} is out of range [0, {spec.num_classes})")
    else:
        values = np.frombuffer(raw, "<f4")
        if not np.isfinite(values).all():
            raise LabelError("non_finite", f"label is {values.tolist()}")
        label = tuple(float(x) for x in values)
    return LabelRecord(rid, label, float(weight), float(stamp))
