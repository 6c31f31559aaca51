"""An OIP tensor's JSON ``data`` decoded with the element type its datatype declares.

The element type carries the datatype's range (``INT8``: -128..127, ``FP16``: ±65504), capped
by the FP32 range every input is converted to, so a value the model cannot take is refused
with its JSON path rather than wrapped, rounded to infinity or coerced from a string or a
boolean. ``data`` may be flat or nested up to the tensor's rank (row-major either way); the
nesting depth is read from the leading brackets, so one typed decoder per (datatype, depth)
does all the checking in C.

>>> decode_json_data(msgspec.Raw(b"[[1, 2], [3, 4]]"), "input", "INT8", rank=2).tolist()
[[1.0, 2.0], [3.0, 4.0]]
>>> decode_json_data(msgspec.Raw(b"[1, 300]"), "input", "INT8", rank=2)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
streamtrain.serve.protocol.tensor_data.TensorDataError: ... Expected `int` <= 127 - at `$[1]` ...
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

import msgspec
import numpy as np

_FP32_MAX = float(np.finfo(np.float32).max)
_UINT64_MAX = int(np.iinfo(np.uint64).max)

NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in {
        "FP16": "f2", "FP32": "f4", "FP64": "f8",
        "INT8": "i1", "INT16": "i2", "INT32": "i4", "INT64": "i8",
        "UINT8": "u1", "UINT16": "u2", "UINT32": "u4", "UINT64": "u8",
    }.items()
}  # fmt: skip


class TensorDataError(ValueError):
    """``data`` that does not fit its datatype or shape; the message says what and where."""


_LEADING_BRACKETS = re.compile(rb"\s*((?:\[\s*)*)")


def _element_type(datatype: str) -> Any:
    dtype = NUMERIC_DTYPES[datatype]
    if dtype.kind == "f":
        bound = min(float(np.finfo(dtype).max), _FP32_MAX)
        return Annotated[float, msgspec.Meta(ge=-bound, le=bound)]
    info = np.iinfo(dtype)
    if info.max > np.iinfo(np.int64).max:
        # msgspec takes no bound beyond int64; its own integer range ends at UINT64's maximum.
        return Annotated[int, msgspec.Meta(ge=0)]
    return Annotated[int, msgspec.Meta(ge=int(info.min), le=int(info.max))]


@functools.cache
def _decoder(datatype: str, depth: int) -> msgspec.json.Decoder[Any]:
    kind: Any = _element_type(datatype)
    for _ in range(depth):
        kind = list[kind]
    return msgspec.json.Decoder(kind)


def decode_json_data(
    data: msgspec.Raw, name: str, datatype: str, rank: int
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """``data`` as a float32 array (flat or nested as sent); TensorDataError says what is wrong.

    ``datatype`` must be a key of :data:`NUMERIC_DTYPES` and ``rank`` the tensor's declared rank.
    """
    prefix = _LEADING_BRACKETS.match(data)
    depth = prefix.group(1).count(b"[") if prefix is not None else 0
    if depth == 0:
        raise TensorDataError(
            f"input {name!r} 'data' must be a list of numbers (flat or nested row-major)"
        )
    if depth > rank:
        raise TensorDataError(
            f"input {name!r} 'data' is nested {depth} lists deep but the tensor has rank {rank}; "
            "send it flat or nested at most once per dimension"
        )
    try:
        values = _decoder(datatype, depth).decode(data)
    except msgspec.ValidationError as exc:
        raise TensorDataError(
            f"input {name!r} holds a value {datatype} cannot take: {exc} "
            "(`$` is the input's 'data')"
        ) from None
    except msgspec.DecodeError as exc:
        raise TensorDataError(f"input {name!r} 'data' is not valid JSON: {exc}") from None
    try:
        if datatype == "UINT64":
            return _uint64_as_float32(values, name)
        return np.array(values, dtype=np.float32)
    except TensorDataError:
        raise
    except ValueError:
        raise TensorDataError(
            f"input {name!r} 'data' holds nested lists of unequal lengths; every row of a "
            "nested tensor must have the same length"
        ) from None


def _uint64_as_float32(values: list[Any], name: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The one range msgspec cannot bound (past int64): numpy's uint64 conversion checks it."""
    try:
        return np.array(values, dtype=np.uint64).astype(np.float32)
    except OverflowError:
        flat = np.array(values, dtype=object).reshape(-1)
        index = next(i for i, v in enumerate(flat) if v > _UINT64_MAX)
        raise TensorDataError(
            f"input {name!r} holds a value UINT64 cannot take: above {_UINT64_MAX} at flat "
            f"index {index} of 'data'"
        ) from None
