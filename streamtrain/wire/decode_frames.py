"""The bytes a JSON decode worker reads and writes: record values in, a :class:`Decoded` out.

No pickle (the values come from Kafka): each frame is an 8-byte little-endian length, a small
JSON header and raw little-endian arrays in a fixed order, so the other side rebuilds numpy
arrays with ``frombuffer`` and no per-sample Python object.

Request (parent -> worker): header ``{"n": n}``; value lengths ``int64[n]``; record timestamps
``float64[n]``; the values back to back.

Response (worker -> parent): header ``{"m": samples, "rejects": [[row, reason, detail], ...],
"ids": [IDs per sparse feature], "error": null}``; ``rows`` ``int64[m]``; features
``float32[m * feature_size]``; labels ``int64[m]`` or ``float32[m * target_dim]``; weights
``float32[m]``; timestamps ``float64[m]``; then per sparse feature (spec order) lengths
``int32[m]``, IDs ``int64[k]``, ID weights ``float32[k]``.

>>> spec = SampleSpec(feature_shape=(2,), task="binary")
>>> n, lengths, stamps, blob = read_request(b"".join(request([b'{"a":1}', b"[]"], np.zeros(2))[1:]))
>>> split_values(lengths, blob), n
([b'{"a":1}', b'[]'], 2)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from streamtrain.sample.sparse_numpy import Jagged, SparseRows
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.decoded import Decoded, Labels
from streamtrain.wire.rejects import REASONS, Reject

_LENGTH = struct.Struct("<Q")
_HEADER = struct.Struct("<I")


class FrameError(RuntimeError):
    """A frame that ended early or does not add up (the other side died mid-write)."""


def _frame(header: dict[str, Any], arrays: Sequence[bytes]) -> list[bytes]:
    """A frame as its parts, to be written one after another: joining them first would copy
    a poll's worth of bytes once more."""
    head = json.dumps(header).encode()
    size = _HEADER.size + len(head) + sum(map(len, arrays))
    return [_LENGTH.pack(size), _HEADER.pack(len(head)), head, *arrays]


def write_frame(stream: IO[bytes], parts: Sequence[bytes]) -> None:
    """Write one frame's parts and flush."""
    for part in parts:
        stream.write(part)
    stream.flush()


def read_frame(stream: IO[bytes]) -> bytes | None:
    """One frame's payload from ``stream``; None at a clean end (EOF before a frame)."""
    prefix = stream.read(_LENGTH.size)
    if not prefix:
        return None
    if len(prefix) != _LENGTH.size:
        raise FrameError("the stream ended inside a frame's length")
    (size,) = _LENGTH.unpack(prefix)
    payload = stream.read(size)
    if len(payload) != size:
        raise FrameError(f"the stream ended after {len(payload)} of a frame's {size} bytes")
    return payload


def _split_header(payload: bytes) -> tuple[dict[str, Any], memoryview]:
    (size,) = _HEADER.unpack_from(payload)
    end = _HEADER.size + size
    return json.loads(payload[_HEADER.size : end]), memoryview(payload)[end:]


class _Reader:
    """Consecutive arrays from one payload's body."""

    def __init__(self, body: memoryview) -> None:
        self._body, self._at = body, 0

    def take(self, dtype: type[np.generic], count: int) -> npt.NDArray[Any]:
        size = np.dtype(dtype).itemsize * count
        if self._at + size > len(self._body):
            raise FrameError("a frame is shorter than its header says")
        out = np.frombuffer(self._body[self._at : self._at + size], dtype)
        self._at += size
        return out

    def rest(self) -> bytes:
        return bytes(self._body[self._at :])


def request(values: Sequence[bytes], record_ts: npt.NDArray[np.float64]) -> list[bytes]:
    """The request frame for ``values`` (their record timestamps in epoch seconds)."""
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    stamps = np.ascontiguousarray(record_ts, "<f8")
    return _frame({"n": len(values)}, [lengths.tobytes(), stamps.tobytes(), b"".join(values)])


def read_request(
    payload: bytes,
) -> tuple[int, npt.NDArray[np.int64], npt.NDArray[np.float64], bytes]:
    """``(n, lengths, record timestamps, values blob)`` of a request payload."""
    header, body = _split_header(payload)
    n = int(header["n"])
    reader = _Reader(body)
    lengths = reader.take(np.int64, n)
    stamps = reader.take(np.float64, n)
    return n, lengths, stamps, reader.rest()


def split_values(lengths: npt.NDArray[np.int64], blob: bytes) -> list[bytes]:
    """The values a request's lengths cut from its blob."""
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    return [blob[a:b] for a, b in zip(starts, ends, strict=True)]


def response(spec: SampleSpec, decoded: Decoded) -> list[bytes]:
    """The response frame of one decoded request."""
    arrays: list[bytes] = [
        np.ascontiguousarray(decoded.rows, "<i8").tobytes(),
        np.ascontiguousarray(decoded.features, "<f4").tobytes(),
        np.ascontiguousarray(decoded.labels, "<i8" if spec.is_classification else "<f4").tobytes(),
        np.ascontiguousarray(decoded.weights, "<f4").tobytes(),
        np.ascontiguousarray(decoded.timestamps, "<f8").tobytes(),
    ]
    ids = []
    if spec.sparse:
        assert decoded.sparse is not None  # finish() gives every sparse spec its columns
        for name in spec.sparse_names:
            jagged = decoded.sparse.features[name]
            ids.append(len(jagged.ids))
            arrays += [
                np.ascontiguousarray(jagged.lengths, "<i4").tobytes(),
                np.ascontiguousarray(jagged.ids, "<i8").tobytes(),
                np.ascontiguousarray(jagged.weights, "<f4").tobytes(),
            ]
    rejects = [[row, r.reason, r.detail] for row, r in decoded.rejects.items()]
    header = {"m": len(decoded.rows), "rejects": rejects, "ids": ids, "error": None}
    return _frame(header, arrays)


def error_response(message: str) -> list[bytes]:
    """A response saying the worker could not decode the request at all (a bug, not a bad
    record: bad records are rejects)."""
    return _frame({"m": 0, "rejects": [], "ids": [], "error": message}, [])


def read_response(spec: SampleSpec, payload: bytes) -> Decoded:
    """The :class:`Decoded` of a response payload (arrays copied out of the payload).

    Raises:
        FrameError: the payload does not add up, or the worker reported an error.
    """
    header, body = _split_header(payload)
    if header.get("error"):
        raise FrameError(f"the decode worker failed: {header['error']}")
    m = int(header["m"])
    reader = _Reader(body)
    rows = reader.take(np.int64, m).copy()
    features = reader.take(np.float32, m * spec.feature_size).reshape(m, *spec.feature_shape)
    labels: Labels
    if spec.is_classification:
        labels = reader.take(np.int64, m).copy()
    else:
        labels = reader.take(np.float32, m * spec.target_dim).reshape(m, spec.target_dim).copy()
    weights = reader.take(np.float32, m).copy()
    timestamps = reader.take(np.float64, m).copy()
    sparse = None
    if spec.sparse:
        features_of = {}
        for name, k in zip(spec.sparse_names, header["ids"], strict=True):
            lengths = reader.take(np.int32, m).copy()
            features_of[name] = Jagged(
                reader.take(np.int64, k).copy(), lengths, reader.take(np.float32, k).copy()
            )
        sparse = SparseRows(features_of)
    rejects = {}
    for row, reason, detail in header["rejects"]:
        if reason not in REASONS:
            raise FrameError(f"the decode worker sent an unknown reject reason {reason!r}")
        rejects[int(row)] = Reject(reason, str(detail))
    return Decoded(rows, features.copy(), labels, weights, timestamps, rejects, sparse)
