"""Binary layout v2 (``application/x-streamtrain-sample``, magic ``STS2``): v1 plus sparse IDs.

Little-endian, packed. The fixed part is layout v1's (:mod:`~streamtrain.wire.binary_format`)
with magic ``b"STS2"``; then::

    size      field
    2         uint16 K: how many sparse features follow
    K times:
      2       uint16 feature index, in the order of model.sparse
      4       uint32 N: IDs of this feature
      1       uint8 flags: bit 0 set = per-ID weights follow the IDs
      8*N     int64 IDs
      4*N     float32 weights (only when flags bit 0 is set)

A feature that is not listed has no IDs in this sample. Both layouts share a content type:
:func:`decode_binary` sends each record to its layout by magic, so v1 records stay readable
(they carry no sparse IDs).

>>> from streamtrain.sample.spec import SampleSpec, SparseFeature
>>> spec = SampleSpec((2,), "binary", sparse=(SparseFeature("items", "items", 4),))
>>> value = encode_binary_v2(spec, [0.5, 1.0], 1, sparse={"items": [7, 8]})
>>> decode_binary(spec, [value], np.zeros(1)).sparse.features["items"].ids.tolist()
[7, 8]
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.binary_format import (
    binary_dtype,
    decode_v1,
    encode_binary,
    magic_code,
    magic_codes,
)
from streamtrain.wire.decoded import Decoded, Labels, finish, merge
from streamtrain.wire.rejects import Reject, SampleError
from streamtrain.wire.sparse_fields import SparseRow, read_ids, read_weights

BINARY_MAGIC_V2 = b"STS2"
_V2_CODE = magic_code(BINARY_MAGIC_V2)
_COUNT = struct.Struct("<H")
_ENTRY = struct.Struct("<HIB")


def encode_binary_v2(
    spec: SampleSpec,
    features: Any,
    label: Any,
    weight: float = 1.0,
    timestamp: float = math.nan,
    sparse: Mapping[str, Sequence[int] | npt.NDArray[np.int64]] | None = None,
    sparse_weights: Mapping[str, Sequence[float] | npt.NDArray[np.float32]] | None = None,
) -> bytes:
    """The binary (layout v2) record value of one sample with its sparse IDs (int64s; hash
    string IDs with :func:`~streamtrain.wire.sparse_fields.hash_id` first).

    Raises:
        SampleError: the dense part does not fit ``spec``, a feature is not declared, or
            its weights are not one per ID.
    """
    fixed = bytearray(encode_binary(spec, features, label, weight, timestamp))
    fixed[:4] = BINARY_MAGIC_V2
    index = {f.name: i for i, f in enumerate(spec.sparse)}
    sparse = sparse or {}
    weights = sparse_weights or {}
    parts = [bytes(fixed), _COUNT.pack(len(sparse))]
    for name, ids in sparse.items():
        if name not in index:
            raise SampleError(
                Reject("unknown_sparse_feature", f"sparse feature {name!r} is not declared")
            )
        id_arr = np.asarray(ids, dtype="<i8").reshape(-1)
        w = weights.get(name)
        parts.append(_ENTRY.pack(index[name], len(id_arr), 0 if w is None else 1))
        parts.append(id_arr.tobytes())
        if w is not None:
            w_arr = np.asarray(w, dtype="<f4").reshape(-1)
            if len(w_arr) != len(id_arr):
                raise SampleError(
                    Reject("bad_sparse_weight", f"{len(w_arr)} weights for {len(id_arr)} IDs")
                )
            parts.append(w_arr.tobytes())
    return b"".join(parts)


def decode_binary(
    spec: SampleSpec,
    values: Sequence[bytes],
    record_ts: npt.NDArray[np.float64],
    sizes: npt.NDArray[np.int64] | None = None,
) -> Decoded:
    """Decode binary values of either layout (by magic), keeping their order. A poll of v1
    records only takes v1's single ``frombuffer`` path."""
    v2, joined = _v2_positions(spec, values, sizes)
    if not v2:
        return decode_v1(spec, values, record_ts, sizes, joined)
    v1 = sorted(set(range(len(values))) - set(v2))
    parts = [_decode_v2(spec, [values[i] for i in v2], record_ts[v2], np.asarray(v2))]
    if v1:
        part = decode_v1(spec, [values[i] for i in v1], record_ts[v1])
        where = np.asarray(v1, np.int64)
        part.rows = where[part.rows]
        part.rejects = {v1[k]: r for k, r in part.rejects.items()}
        parts.append(part)
    return merge(spec, parts, {})


def _v2_positions(
    spec: SampleSpec, values: Sequence[bytes], sizes: npt.NDArray[np.int64] | None
) -> tuple[list[int], bytes | None]:
    """Positions of the v2 records, and the joined values when every value has v1's size (the
    usual dense poll): then one vectorised magic comparison over them replaces a Python-level
    slice and comparison per record (~0.1 µs a record), and v1's decode reuses the join
    instead of joining again (~0.09 µs a record)."""
    dtype = binary_dtype(spec)
    if sizes is not None and len(values) and bool((sizes == dtype.itemsize).all()):
        joined = b"".join(values)
        magic = magic_codes(joined, dtype.itemsize)
        return np.flatnonzero(magic == _V2_CODE).tolist(), joined
    return [i for i, value in enumerate(values) if value[:4] == BINARY_MAGIC_V2], None


def _decode_v2(
    spec: SampleSpec,
    values: list[bytes],
    record_ts: npt.NDArray[np.float64],
    positions: npt.NDArray[np.int64],
) -> Decoded:
    """v2 records at ``positions`` of the poll: the fixed parts in one ``frombuffer``, the
    sparse tails one by one."""
    dtype = binary_dtype(spec)
    fixed = dtype.itemsize
    rejects: dict[int, Reject] = {}
    rows: list[int] = []
    sparse_rows: list[SparseRow] = []
    for k, value in enumerate(values):
        tail = _read_tail(spec, value, fixed)
        if isinstance(tail, Reject):
            rejects[int(positions[k])] = tail
        else:
            rows.append(k)
            sparse_rows.append(tail)
    if not rows:
        return Decoded.nothing(spec, rejects)
    arr = np.frombuffer(b"".join([values[k][:fixed] for k in rows]), dtype=dtype)
    labels: Labels
    if spec.is_classification:
        labels = arr["label"].astype(np.int64)
    else:
        labels = arr["label"].astype(np.float32)
    decoded = Decoded(
        rows=positions[rows],
        features=arr["features"].reshape(len(arr), *spec.feature_shape).astype(np.float32),
        labels=labels,
        weights=arr["weight"].astype(np.float32),
        timestamps=arr["timestamp"].astype(np.float64),
        rejects=rejects,
        sparse=SparseRows.from_lists(spec.sparse_names, sparse_rows),
    )
    # finish indexes record_ts by row, so it sees the poll-wide timestamps
    full_ts = np.zeros(int(positions.max()) + 1)
    full_ts[positions] = record_ts
    return finish(spec, decoded, full_ts)


def _read_tail(spec: SampleSpec, value: bytes, fixed: int) -> SparseRow | Reject:
    """The sparse entries after the fixed part of one v2 record, or why they are wrong."""
    view = memoryview(value)
    if len(value) < fixed + _COUNT.size:
        return _short(spec, len(value), fixed)
    (count,) = _COUNT.unpack_from(view, fixed)
    pos = fixed + _COUNT.size
    row: SparseRow = {}
    for _ in range(count):
        if pos + _ENTRY.size > len(value):
            return _short(spec, len(value), fixed)
        index, n, flags = _ENTRY.unpack_from(view, pos)
        pos += _ENTRY.size
        if index >= len(spec.sparse):
            return Reject(
                "unknown_sparse_feature",
                f"sparse feature index {index} is not declared; model.sparse has "
                f"{len(spec.sparse)} feature(s)",
            )
        feature = spec.sparse[index]
        if feature.name in row:
            return Reject("bad_sparse", f"sparse feature {feature.name!r} appears twice")
        end = pos + 8 * n + (4 * n if flags & 1 else 0)
        if end > len(value):
            return _short(spec, len(value), fixed)
        ids = np.frombuffer(view[pos : pos + 8 * n], "<i8").tolist()
        got_ids = read_ids(feature.name, ids, feature.max_length)
        if isinstance(got_ids, Reject):
            return got_ids
        weights = None
        if flags & 1:
            weights = np.frombuffer(view[pos + 8 * n : end], "<f4").tolist()
        got = read_weights(feature.name, weights, n)
        if isinstance(got, Reject):
            return got
        row[feature.name] = (got_ids, got)
        pos = end
    if pos != len(value):
        return Reject(
            "bad_shape", f"binary v2 sample has {len(value) - pos} bytes after its last entry"
        )
    return row


def _short(spec: SampleSpec, size: int, fixed: int) -> Reject:
    return Reject(
        "bad_shape",
        f"binary v2 sample is {size} bytes, shorter than its entries say (fixed part "
        f"{fixed} bytes for shape {list(spec.feature_shape)} (model.input_shape), then "
        "uint16 count and the sparse entries)",
    )
