"""Open Inference Protocol (KServe v2) REST bodies: parse and validate requests, encode replies.

Both the plain JSON form and Triton's binary tensor extension are understood: when the request
carries an ``Inference-Header-Content-Length`` header, the body is that many bytes of JSON
followed by the raw little-endian bytes of every input whose parameters name a
``binary_data_size``. Outputs are returned as raw bytes when the request asks for it
(``parameters.binary_data_output`` or an output's ``parameters.binary_data``), which is what
``tritonclient.http`` does by default.

Input datatypes: every numeric OIP type (FP16, FP32, FP64, INT8-64, UINT8-64) is accepted and
converted to FP32; BOOL and BYTES are refused with a 400 naming the accepted types.

>>> meta = ModelIO(feature_shape=(2,), outputs=(TensorMeta("value", "FP32", (-1, 1)),))
>>> body = b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'
>>> request = parse_infer_request(body, None, meta)
>>> request.features.shape, request.outputs
((1, 2), ('value',))
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamtrain.spec import SampleSpec

INPUT_NAME = "input"
BINARY_HEADER = "Inference-Header-Content-Length"

_NUMERIC: dict[str, np.dtype[Any]] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in {
        "FP16": "f2", "FP32": "f4", "FP64": "f8",
        "INT8": "i1", "INT16": "i2", "INT32": "i4", "INT64": "i8",
        "UINT8": "u1", "UINT16": "u2", "UINT32": "u4", "UINT64": "u8",
    }.items()
}  # fmt: skip
_OUTPUT_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}


class ProtocolError(ValueError):
    """A request that cannot be answered; ``status`` and ``outcome`` say how to report it."""

    def __init__(self, message: str, status: int = 400, outcome: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks the batch dimension

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelIO:
    """The tensors a served model takes and returns."""

    feature_shape: tuple[int, ...]
    outputs: tuple[TensorMeta, ...]

    @classmethod
    def for_spec(cls, spec: SampleSpec) -> ModelIO:
        if spec.is_classification:
            outputs: tuple[TensorMeta, ...] = (
                TensorMeta("probabilities", "FP32", (-1, spec.num_classes)),
                TensorMeta("predicted_class", "INT64", (-1,)),
            )
        else:
            outputs = (TensorMeta("value", "FP32", (-1, spec.target_dim)),)
        return cls(spec.feature_shape, outputs)

    @property
    def input(self) -> TensorMeta:
        return TensorMeta(INPUT_NAME, "FP32", (-1, *self.feature_shape))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    features: np.ndarray[Any, np.dtype[np.float32]]  # [n, *feature_shape]
    outputs: tuple[str, ...]  # requested, in the order to return them
    binary_outputs: frozenset[str]


def parse_infer_request(body: bytes, header_length: str | None, io: ModelIO) -> InferRequest:
    """Validate an infer body against the model; raise ProtocolError naming what is wrong."""
    json_part, binary = _split_binary(body, header_length)
    try:
        doc = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ProtocolError('request body must be a JSON object like {"inputs": [...]}')
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string, got {type(request_id).__name__}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(f"'inputs' must be a non-empty list holding one tensor {INPUT_NAME!r}")
    names = [i.get("name") if isinstance(i, dict) else None for i in inputs]
    unknown = [n for n in names if n != INPUT_NAME]
    if unknown:
        raise ProtocolError(
            f"unknown input {unknown[0]!r}; this model takes one input named {INPUT_NAME!r}"
        )
    if len(inputs) > 1:
        raise ProtocolError(f"input {INPUT_NAME!r} given {len(inputs)} times; give it once")
    features, used = _features(inputs[0], binary, io.feature_shape)
    if used != len(binary):
        raise ProtocolError(
            f"{len(binary) - used} binary byte(s) after the tensors the JSON header describes; "
            "check each input's binary_data_size"
        )
    outputs, binary_outputs = _requested_outputs(doc, io)
    return InferRequest(request_id, features, outputs, binary_outputs)


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"{BINARY_HEADER} must be an integer, got {header_length!r}") from None
    if not 0 <= length <= len(body):
        raise ProtocolError(f"{BINARY_HEADER} is {length} but the body has only {len(body)} bytes")
    return body[:length], body[length:]


def _features(
    tensor: dict[str, Any], binary: bytes, feature_shape: tuple[int, ...]
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"input 'shape' must be a list of non-negative ints, got {shape!r}")
    expected = [-1, *feature_shape]
    if len(shape) != len(expected) or shape[1:] != list(feature_shape) or shape[0] < 1:
        raise ProtocolError(
            f"input shape {shape} does not fit the model: expected [n, "
            f"{', '.join(map(str, feature_shape))}] with n >= 1 rows"
        )
    datatype = tensor.get("datatype")
    dtype = _NUMERIC.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ProtocolError(
            f"input datatype {datatype!r} is not supported; use FP32 (also accepted: "
            f"{', '.join(sorted(_NUMERIC))}; values are converted to FP32)"
        )
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if type(size) is not int or size != count * dtype.itemsize:
            raise ProtocolError(
                f"binary_data_size {size!r} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes expected)"
            )
        if size > len(binary):
            raise ProtocolError(f"binary input needs {size} bytes, the body carries {len(binary)}")
        values = np.frombuffer(binary, dtype=dtype, count=count).astype(np.float32)
        used = size
    else:
        values = _json_values(tensor.get("data"), count, shape)
        used = 0
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ProtocolError(
            f"input holds a non-finite number (NaN, Inf or out of FP32 range) at flat index {bad}"
        )
    return values.reshape(shape), used


def _json_values(data: Any, count: int, shape: list[int]) -> np.ndarray[Any, np.dtype[np.float32]]:
    if not isinstance(data, list):
        raise ProtocolError("input 'data' must be a list of numbers (flat or nested row-major)")
    try:
        array = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(
            f"input 'data' must hold only numbers in even nested lists: {exc}"
        ) from None
    if array.size != count:
        raise ProtocolError(f"input 'data' has {array.size} values but shape {shape} needs {count}")
    with np.errstate(over="ignore"):
        return array.reshape(-1).astype(np.float32)


def _requested_outputs(
    doc: Mapping[str, Any], io: ModelIO
) -> tuple[tuple[str, ...], frozenset[str]]:
    params = doc.get("parameters") or {}
    all_binary = isinstance(params, dict) and params.get("binary_data_output") is True
    requested = doc.get("outputs")
    if requested is None:
        names = io.output_names
        return names, frozenset(names if all_binary else ())
    if not isinstance(requested, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
    ):
        raise ProtocolError('\'outputs\' must be a list like [{"name": "probabilities"}]')
    chosen: list[str] = []
    binary: set[str] = set()
    for out in requested:
        name = out["name"]
        if name not in io.output_names:
            raise ProtocolError(
                f"unknown output {name!r}; this model returns {list(io.output_names)}"
            )
        if name in chosen:
            raise ProtocolError(f"output {name!r} requested twice")
        chosen.append(name)
        out_params = out.get("parameters") or {}
        if all_binary or (isinstance(out_params, dict) and out_params.get("binary_data") is True):
            binary.add(name)
    return tuple(chosen or io.output_names), frozenset(binary)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    results: Mapping[str, np.ndarray[Any, Any]],
    io: ModelIO,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary extension when any output is binary)."""
    datatypes = {o.name: o.datatype for o in io.outputs}
    outputs: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for name in request.outputs:
        datatype = datatypes[name]
        array = np.ascontiguousarray(results[name], dtype=_OUTPUT_DTYPES[datatype])
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if name in request.binary_outputs:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not buffers:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", BINARY_HEADER: str(len(header))}
    return b"".join([header, *buffers]), headers


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
