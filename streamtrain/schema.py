"""The wire format of one sample on the samples topic, and its encoders.

A sample is one Kafka record. Its ``content-type`` header picks the codec:

* ``application/json`` (or no header): a UTF-8 JSON object
  ``{"features": [...], "label": ..., "weight": 1.0, "timestamp": 1700000000.0}``.
  ``features`` is a flat list, or nested lists for images and sequences, shaped like
  ``model.input_shape``; ``label`` is an int class (``true``/``false`` also work for a binary
  task), a float (regression with ``target_dim == 1``) or a list of ``target_dim`` floats;
  ``weight`` (optional, default 1) must be finite and >= 0; ``timestamp`` (optional, epoch
  seconds) defaults to the Kafka record timestamp.
* ``application/x-streamtrain-sample``: the fixed binary layout v1, little-endian, packed::

      offset  size        field
      0       4           magic b"STS1"
      4       8           timestamp, float64 epoch seconds (NaN = use the Kafka record timestamp)
      12      4           weight, float32
      16      8 | 4*T     label: int64 class index (classification) or float32 x target_dim
      ...     4*F         features: float32 x prod(feature_shape), row-major (C order)

  Every record of a spec has the same length, so one poll decodes with a single
  ``np.frombuffer`` over ``b"".join(values)``.

Records that do not match are rejected with one reason of :data:`REASONS` and a detail that
names what was expected. ``docs/wire-format.md`` holds the same description for producers
written in other languages.

>>> from streamtrain.spec import SampleSpec
>>> spec = SampleSpec(feature_shape=(2,), task="binary")
>>> encode_json([0.5, 1.0], 1)
b'{"features":[0.5,1.0],"label":1}'
>>> len(encode_binary(spec, [0.5, 1.0], 1)) == binary_dtype(spec).itemsize == 32
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from streamtrain.spec import SampleSpec

CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/x-streamtrain-sample"
BINARY_MAGIC = b"STS1"

Format = Literal["json", "binary"]
CONTENT_TYPES: dict[str, str] = {"json": JSON_CONTENT_TYPE, "binary": BINARY_CONTENT_TYPE}

RejectReason = Literal[
    "undecodable",  # not JSON / not an object / wrong binary magic / tombstone
    "bad_shape",  # features missing, of the wrong shape or length, or not numbers
    "non_finite",  # NaN or Inf in features, label or weight
    "bad_label",  # missing, of the wrong type, or out of range
    "bad_weight",  # negative or not a number
    "bad_timestamp",  # not a finite number
    "oversized",  # larger than max_record_bytes
    "unknown_content_type",  # a content-type header naming neither codec
]
REASONS: tuple[RejectReason, ...] = get_args(RejectReason)


@dataclass(frozen=True)
class Reject:
    """Why one record is not a valid sample: a reason from :data:`REASONS` and a detail."""

    reason: RejectReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class SampleError(ValueError):
    """A sample that cannot be encoded or decoded; ``reject`` says why."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(str(reject))
        self.reject = reject


class Sample(BaseModel):
    """One sample as a user writes it; ``to_json()`` gives the record value.

    >>> Sample(features=[1.0, 2.0], label=0, weight=0.5).to_json()
    b'{"features":[1.0,2.0],"label":0,"weight":0.5}'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: list[Any]
    label: bool | int | float | list[float]
    weight: float | None = None
    timestamp: float | None = None

    def to_json(self) -> bytes:
        return encode_json(self.features, self.label, self.weight, self.timestamp)


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def binary_dtype(spec: SampleSpec) -> np.dtype[np.void]:
    """The numpy structured dtype of binary layout v1 for ``spec`` (packed, little-endian)."""
    label: tuple[Any, ...] = ("label", "<i8")
    if not spec.is_classification:
        label = ("label", "<f4", (spec.target_dim,))
    return np.dtype(
        [
            ("magic", "S4"),
            ("timestamp", "<f8"),
            ("weight", "<f4"),
            label,
            ("features", "<f4", (spec.feature_size,)),
        ]
    )


def _plain(value: Any) -> Any:
    """numpy arrays and scalars to the JSON-able Python values they hold."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def encode_json(
    features: Any, label: Any, weight: float | None = None, timestamp: float | None = None
) -> bytes:
    """The JSON record value of one sample; NaN/Inf are refused (they are not JSON).

    Raises:
        SampleError: a value is NaN or Inf, or not JSON-serialisable.
    """
    obj: dict[str, Any] = {"features": _plain(features), "label": _plain(label)}
    if weight is not None:
        obj["weight"] = float(weight)
    if timestamp is not None:
        obj["timestamp"] = float(timestamp)
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise SampleError(Reject("non_finite", f"cannot encode as JSON: {exc}")) from exc
    except TypeError as exc:
        raise SampleError(Reject("undecodable", f"cannot encode as JSON: {exc}")) from exc


def encode_binary(
    spec: SampleSpec,
    features: Any,
    label: Any,
    weight: float = 1.0,
    timestamp: float = math.nan,
) -> bytes:
    """The binary (layout v1) record value of one sample.

    Raises:
        SampleError: features or label do not fit ``spec``.
    """
    feats = np.asarray(features, dtype=np.float32)
    labels = np.asarray([label]) if spec.is_classification else np.asarray(label)[None]
    return encode_binary_many(
        spec, feats[None], labels, np.asarray([weight]), np.asarray([timestamp])
    )[0]


def encode_binary_many(
    spec: SampleSpec,
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    timestamps: npt.ArrayLike | None = None,
) -> list[bytes]:
    """Binary record values for ``n`` samples at once: features ``[n, *feature_shape]``,
    labels ``[n]`` (classes) or ``[n]``/``[n, target_dim]`` (regression).

    Raises:
        SampleError: an array does not fit ``spec``.
    """
    feats = np.asarray(features, dtype=np.float32)
    n = feats.shape[0] if feats.ndim else 0
    if feats.shape[1:] != spec.feature_shape:
        raise SampleError(
            Reject(
                "bad_shape",
                f"features has shape {shape_text(feats.shape[1:])} per sample, expected "
                f"{shape_text(spec.feature_shape)} (model.input_shape)",
            )
        )
    dtype = binary_dtype(spec)
    out = np.zeros(n, dtype=dtype)
    out["magic"] = BINARY_MAGIC
    out["features"] = feats.reshape(n, -1)
    out["weight"] = 1.0 if weights is None else np.asarray(weights, dtype=np.float32)
    out["timestamp"] = math.nan if timestamps is None else np.asarray(timestamps, np.float64)
    if spec.is_classification:
        raw = np.asarray(labels)
        if raw.shape != (n,) or raw.dtype.kind not in "biu":
            raise SampleError(
                Reject(
                    "bad_label",
                    f"labels must be {n} int class indices, got {raw.dtype}"
                    f" of shape {shape_text(raw.shape)}",
                )
            )
        out["label"] = raw.astype(np.int64)
    else:
        raw = np.asarray(labels, dtype=np.float32).reshape(n, -1)
        if raw.shape[1] != spec.target_dim:
            raise SampleError(
                Reject(
                    "bad_label",
                    f"labels have {raw.shape[1]} values per sample, expected "
                    f"{spec.target_dim} (model.target_dim)",
                )
            )
        out["label"] = raw
    buf = out.tobytes()
    size = dtype.itemsize
    return [buf[i : i + size] for i in range(0, n * size, size)]
