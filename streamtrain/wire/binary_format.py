"""Binary layout v1 (``application/x-streamtrain-sample``): its dtype, encoders and decoder.

Little-endian, packed::

    offset  size        field
    0       4           magic b"STS1"
    4       8           timestamp, float64 epoch seconds (NaN = use the Kafka record timestamp)
    12      4           weight, float32
    16      8 | 4*T     label: int64 class index (classification) or float32 x target_dim
    ...     4*F         features: float32 x prod(feature_shape), row-major (C order)

Every record of a spec has the same length, so a poll decodes with one ``np.frombuffer`` over
``b"".join(values)``. Layout v2 (:mod:`~streamtrain.wire.binary_v2`) adds sparse features
after the same fixed part; :func:`~streamtrain.wire.binary_v2.decode_binary` reads both.

>>> from streamtrain.sample.spec import SampleSpec
>>> spec = SampleSpec(feature_shape=(2,), task="binary")
>>> len(encode_binary(spec, [0.5, 1.0], 1)) == binary_dtype(spec).itemsize == 32
True
>>> decode_v1(spec, [encode_binary(spec, [0.5, 1.0], 1)], np.zeros(1)).labels.tolist()
[1]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.decoded import Decoded, Labels, finish
from streamtrain.wire.rejects import Reject, SampleError, shape_text

BINARY_MAGIC = b"STS1"


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


def magic_codes(buf: bytes, itemsize: int) -> npt.NDArray[np.uint32]:
    """The first four bytes of each ``itemsize``-byte record in ``buf``, one little-endian
    uint32 each, to compare with :func:`magic_code`: half the time of numpy's ``S4``
    comparison (~3 of ~6 ns a record)."""
    head = np.dtype({"names": ["m"], "formats": ["<u4"], "offsets": [0], "itemsize": itemsize})
    codes: npt.NDArray[np.uint32] = np.frombuffer(buf, head)["m"]
    return codes


def magic_code(magic: bytes) -> int:
    """A four-byte magic as :func:`magic_codes` reads it."""
    return int.from_bytes(magic, "little")


_V1_CODE = magic_code(BINARY_MAGIC)


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


def decode_v1(
    spec: SampleSpec,
    values: Sequence[bytes],
    record_ts: npt.NDArray[np.float64],
    sizes: npt.NDArray[np.int64] | None = None,
    joined: bytes | None = None,
) -> Decoded:
    """Decode binary layout v1 values: one ``frombuffer`` over every value of the right size,
    then the checks of :func:`~streamtrain.wire.decoded.finish`. ``sizes`` are the values'
    lengths and ``joined`` is ``b"".join(values)`` when the caller has them already."""
    dtype = binary_dtype(spec)
    size = dtype.itemsize
    rejects: dict[int, Reject] = {}
    if sizes is None:
        sizes = np.fromiter(map(len, values), np.int64, len(values))
    if (sizes == size).all():
        rows = np.arange(len(values), dtype=np.int64)
        buf = b"".join(values) if joined is None else joined
    else:
        label = "int64 class" if spec.is_classification else f"{spec.target_dim} x float32"
        for i in np.flatnonzero(sizes != size).tolist():
            rejects[i] = Reject(
                "bad_shape",
                f"binary sample is {sizes[i]} bytes, expected {size} (layout v1: 16-byte "
                f"header, {label} label, {spec.feature_size} x float32 features for shape "
                f"{shape_text(spec.feature_shape)} (model.input_shape))",
            )
        rows = np.flatnonzero(sizes == size)
        buf = b"".join([values[i] for i in rows.tolist()])
    if not len(rows):
        return Decoded.nothing(spec, rejects)
    arr = np.frombuffer(buf, dtype=dtype)
    magic_ok = magic_codes(buf, size) == _V1_CODE
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
    return finish(spec, decoded, record_ts)
