"""Sparse ID features in an OIP infer request: the tensors beside ``input``, checked.

For each sparse feature ``f`` the model declares (``model.sparse``), a request may carry:

* ``f``: the IDs of every row back to back, ``[nnz]``, INT64 (or INT32), or BYTES strings
  hashed to int64 as on the wire (``streamtrain.wire.hash_id``);
* ``f__lengths``: ``[n]`` INT64 (or INT32), how many of those IDs belong to each row of
  ``input`` (they must add up to ``nnz``; each at most the feature's ``max_length``);
* ``f__weights`` (optional): ``[nnz]`` FP32, one weight per ID (default 1).

A feature left out has no IDs in any row. Both the JSON ``data`` form and Triton's binary
extension are read (BYTES binary data is Triton's serialisation: a 4-byte little-endian length
before each string).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Protocol

import msgspec
import numpy as np

from streamtrain.sample.sparse_numpy import Jagged, SparseRows
from streamtrain.sample.spec import SparseFeature
from streamtrain.wire.sparse_fields import hash_id

LENGTHS, WEIGHTS = "__lengths", "__weights"
_INT_TYPES: dict[str, np.dtype[Any]] = {"INT64": np.dtype("<i8"), "INT32": np.dtype("<i4")}
_INT_LIST = msgspec.json.Decoder(list[Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]])
_FLOAT_LIST = msgspec.json.Decoder(list[float])
_STR_LIST = msgspec.json.Decoder(list[str])
_Array = np.ndarray[Any, Any]


class SparseInputError(ValueError):
    """A sparse input tensor that does not fit the model; the message says what and how."""


class InputTensor(Protocol):
    """The fields of one OIP input tensor this module reads."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> list[int]: ...
    @property
    def datatype(self) -> str: ...
    @property
    def data(self) -> msgspec.Raw: ...


def input_names(features: Sequence[SparseFeature]) -> set[str]:
    """Every input name the sparse features allow."""
    return {f.name + suffix for f in features for suffix in ("", LENGTHS, WEIGHTS)}


def read_tensor(tensor: InputTensor, binary_size: int | None, binary: memoryview) -> _Array:
    """One sparse input as an array: int64 IDs or lengths, or float32 weights."""
    name, dtype = tensor.name, tensor.datatype
    if len(tensor.shape) != 1 or tensor.shape[0] < 0:
        raise SparseInputError(f"input {name!r} has shape {tensor.shape}; expected one dimension")
    count = tensor.shape[0]
    weights = name.endswith(WEIGHTS)
    ids = not weights and not name.endswith(LENGTHS)
    allowed = ["FP32"] if weights else [*_INT_TYPES, "BYTES"] if ids else [*_INT_TYPES]
    if dtype not in allowed:
        raise SparseInputError(
            f"input {name!r} is {dtype}; use {' or '.join(allowed)} (docs/serving.md)"
        )
    if binary_size is None:
        decoder: msgspec.json.Decoder[Any] = (
            _FLOAT_LIST if weights else _STR_LIST if dtype == "BYTES" else _INT_LIST
        )
        try:
            values: list[Any] = decoder.decode(tensor.data) if count else []
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise SparseInputError(f"input {name!r} 'data' does not fit {dtype}: {exc}") from None
        if len(values) != count:
            raise SparseInputError(f"input {name!r} has {len(values)} values, shape says {count}")
        if dtype == "BYTES":
            return np.asarray([hash_id(v) for v in values], np.int64)
        out: _Array = np.asarray(values, np.float32 if weights else np.int64)
    elif dtype == "BYTES":
        out = _bytes_ids(name, binary[:binary_size], count)
    else:
        wire: np.dtype[Any] = np.dtype("<f4") if weights else _INT_TYPES[dtype]
        if binary_size != count * wire.itemsize or binary_size > len(binary):
            raise SparseInputError(
                f"input {name!r} binary_data_size {binary_size} does not match shape {count} "
                f"of {dtype} ({count * wire.itemsize} bytes), or the body is short"
            )
        raw = np.frombuffer(binary[:binary_size], dtype=wire)
        out = raw.astype(np.float32 if weights else np.int64)
    if weights and not (np.isfinite(out).all() and bool((out >= 0).all())):
        raise SparseInputError(f"input {name!r} must hold finite weights >= 0")
    return out


def _bytes_ids(name: str, raw: memoryview, count: int) -> _Array:
    ids, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise SparseInputError(f"input {name!r} BYTES data is shorter than its {count} items")
        (size,) = struct.unpack_from("<I", raw, pos)
        text = bytes(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
        try:
            ids.append(hash_id(text.decode("utf-8")))
        except UnicodeDecodeError:
            raise SparseInputError(f"input {name!r} holds an ID that is not UTF-8") from None
    if pos != len(raw):
        raise SparseInputError(f"input {name!r} BYTES data has bytes after its {count} items")
    return np.asarray(ids, np.int64)


def assemble(
    features: Sequence[SparseFeature], tensors: Mapping[str, _Array], n: int
) -> SparseRows:
    """The jagged rows of ``n`` samples from the parsed sparse tensors."""
    out = {}
    for f in features:
        ids, lengths = tensors.get(f.name), tensors.get(f.name + LENGTHS)
        weights = tensors.get(f.name + WEIGHTS)
        if ids is None and lengths is None and weights is None:
            out[f.name] = Jagged.empty(n)
            continue
        if ids is None or lengths is None:
            raise SparseInputError(
                f"sparse feature {f.name!r} needs both inputs {f.name!r} (IDs) and "
                f"{f.name + LENGTHS!r} (IDs per row)"
            )
        if len(lengths) != n or (lengths < 0).any() or int(lengths.sum()) != len(ids):
            raise SparseInputError(
                f"input {f.name + LENGTHS!r} must hold {n} counts >= 0 (one per row of "
                f"'input') adding up to the {len(ids)} IDs of {f.name!r}"
            )
        if (lengths > f.max_length).any():
            raise SparseInputError(
                f"a row of {f.name!r} has {int(lengths.max())} IDs, over its max_length "
                f"{f.max_length} (model.sparse)"
            )
        if weights is not None and len(weights) != len(ids):
            raise SparseInputError(f"input {f.name + WEIGHTS!r} needs one weight per ID")
        w = np.ones(len(ids), np.float32) if weights is None else weights.astype(np.float32)
        out[f.name] = Jagged(ids.astype(np.int64), lengths.astype(np.int32), w)
    return SparseRows(out)
