"""Open Inference Protocol (KServe v2) REST bodies: parse and validate requests, encode replies.

Bodies are decoded by msgspec straight into typed structs: no generic dict tree, no
per-request pydantic model, and every type or range error names its JSON path. Tensor
``data`` is decoded in a second typed pass whose element type comes from the declared
datatype, so a string, a boolean, a fraction in an integer tensor or a number out of the
datatype's range is refused with its position (``$[0][5]``) instead of being coerced.
msgspec counts nesting against the interpreter's recursion limit and raises
``RecursionError`` instead of overflowing the C stack; a body nested that deep is a 400.

Both the plain JSON form and Triton's binary tensor extension are understood: when the request
carries an ``Inference-Header-Content-Length`` header, the body is that many bytes of JSON
followed by the raw little-endian bytes of every input whose parameters name a
``binary_data_size``. Outputs are returned as raw bytes when the request asks for it
(``parameters.binary_data_output`` or an output's ``parameters.binary_data``), which is what
``tritonclient.http`` does by default.

Input datatypes: every numeric OIP type (FP16, FP32, FP64, INT8-64, UINT8-64) is accepted and
converted to FP32; BOOL and BYTES are refused with a 400 naming the accepted types. A model
with sparse ID features also takes, per feature, its IDs and their count per row
(:mod:`~streamtrain.serve.protocol.sparse_inputs`).

>>> meta = ModelIO(feature_shape=(2,), outputs=(TensorMeta("value", "FP32", (-1, 1)),))
>>> body = b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'
>>> request = parse_infer_request(body, None, meta)
>>> request.features.shape, request.outputs
((1, 2), ('value',))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.serve.protocol import sparse_inputs
from streamtrain.serve.protocol.tensor_data import NUMERIC_DTYPES, TensorDataError, decode_json_data

INPUT_NAME = "input"
BINARY_HEADER = "Inference-Header-Content-Length"
_REQUEST_EXAMPLE = (
    '{"inputs": [{"name": "input", "shape": [1, ...], "datatype": "FP32", "data": [...]}]}'
)


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
    sparse: tuple[SparseFeature, ...] = ()  # sparse ID inputs (serve/protocol/sparse_inputs.py)

    @classmethod
    def for_spec(cls, spec: SampleSpec) -> ModelIO:
        if spec.is_classification:
            outputs: tuple[TensorMeta, ...] = (
                TensorMeta("probabilities", "FP32", (-1, spec.num_classes)),
                TensorMeta("predicted_class", "INT64", (-1,)),
            )
        else:
            outputs = (TensorMeta("value", "FP32", (-1, spec.target_dim)),)
        return cls(spec.feature_shape, outputs, spec.sparse)

    @property
    def input(self) -> TensorMeta:
        return TensorMeta(INPUT_NAME, "FP32", (-1, *self.feature_shape))

    @property
    def inputs(self) -> tuple[TensorMeta, ...]:
        """``input`` and, per sparse feature, its IDs and IDs-per-row tensors (metadata)."""
        sparse = [
            TensorMeta(f.name + suffix, "INT64", (-1,))
            for f in self.sparse
            for suffix in ("", sparse_inputs.LENGTHS)
        ]
        return (self.input, *sparse)

    # Read on every request: computed once (a frozen dataclass's cached_property writes its
    # instance __dict__, not through __setattr__).
    @functools.cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @functools.cached_property
    def output_datatypes(self) -> dict[str, str]:
        return {o.name: o.datatype for o in self.outputs}

    @functools.cached_property
    def input_names(self) -> frozenset[str]:
        """The dense input's name and every sparse input's."""
        return frozenset({INPUT_NAME} | sparse_inputs.input_names(self.sparse))


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    features: np.ndarray[Any, np.dtype[np.float32]]  # [n, *feature_shape]
    outputs: tuple[str, ...]  # requested, in the order to return them
    binary_outputs: frozenset[str]
    # Outputs asked for with the classification extension: name -> k (top-k "score:index").
    class_counts: Mapping[str, int] = field(default_factory=dict)
    sparse: SparseRows | None = None  # the rows' sparse IDs, for a model that declares them


# --- wire structs (unknown fields are skipped, as OIP allows extra parameters) -------------
class _InputParameters(msgspec.Struct):
    binary_data_size: int | None = None


class _InputTensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: msgspec.Raw = msgspec.Raw()  # decoded once the datatype and shape are known
    parameters: _InputParameters | None = None


class _OutputParameters(msgspec.Struct):
    binary_data: bool = False
    classification: int | None = None


class _RequestedOutput(msgspec.Struct):
    name: str
    parameters: _OutputParameters | None = None


class _RequestParameters(msgspec.Struct):
    binary_data_output: bool = False


class _InferRequestBody(msgspec.Struct):
    inputs: list[_InputTensor]
    id: str | None = None
    parameters: _RequestParameters | None = None
    outputs: list[_RequestedOutput] | None = None


_REQUEST_DECODER = msgspec.json.Decoder(_InferRequestBody)
_ENCODER = msgspec.json.Encoder()


def encode_json(value: Any) -> bytes:
    """Any reply document as compact JSON bytes."""
    return _ENCODER.encode(value)


def parse_infer_request(body: bytes, header_length: str | None, io: ModelIO) -> InferRequest:
    """Validate an infer body against the model; raise ProtocolError naming what is wrong."""
    json_part, binary = _split_binary(body, header_length)
    try:
        doc = _REQUEST_DECODER.decode(json_part)
    except msgspec.ValidationError as exc:
        raise ProtocolError(
            f"request body is not an OIP infer request: {exc}; expected {_REQUEST_EXAMPLE}"
        ) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(
            "request body is nested too deeply to be an OIP infer request; expected "
            f"{_REQUEST_EXAMPLE}"
        ) from None
    inputs = doc.inputs
    if len(inputs) == 1 and inputs[0].name == INPUT_NAME:  # the common request: no checks left
        dense, used = _features(inputs[0], binary, io.feature_shape)
        return _checked(doc, io, dense, used, len(binary), {})
    if not inputs:
        raise ProtocolError(f"'inputs' must be a non-empty list holding one tensor {INPUT_NAME!r}")
    allowed = io.input_names
    unknown = [t.name for t in doc.inputs if t.name not in allowed]
    if unknown:
        takes = f"one input named {INPUT_NAME!r}"
        if io.sparse:
            takes += f" plus sparse inputs {sorted(allowed - {INPUT_NAME})}"
        raise ProtocolError(f"unknown input {unknown[0]!r}; this model takes {takes}")
    names = [t.name for t in doc.inputs]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise ProtocolError(f"input {twice!r} given {names.count(twice)} times; give it once")
    if INPUT_NAME not in names:
        raise ProtocolError(f"the request has no input {INPUT_NAME!r}; expected {_REQUEST_EXAMPLE}")
    view, used, features = memoryview(binary), 0, None
    tensors = {}
    size: int | None
    for tensor in doc.inputs:  # binary data follows the JSON in the order of the inputs
        if tensor.name == INPUT_NAME:
            features, size = _features(tensor, view[used:], io.feature_shape)
        else:
            size = tensor.parameters.binary_data_size if tensor.parameters else None
            try:
                tensors[tensor.name] = sparse_inputs.read_tensor(tensor, size, view[used:])
            except sparse_inputs.SparseInputError as exc:
                raise ProtocolError(str(exc)) from None
        used += size or 0
    assert features is not None
    return _checked(doc, io, features, used, len(binary), tensors)


def _checked(
    doc: _InferRequestBody,
    io: ModelIO,
    features: np.ndarray[Any, np.dtype[np.float32]],
    used: int,
    binary: int,
    tensors: dict[str, Any],
) -> InferRequest:
    """The request, once the binary bytes are all used (``used`` of ``binary``) and the
    sparse ``tensors`` and requested outputs check out."""
    if used != binary:
        raise ProtocolError(
            f"{binary - used} binary byte(s) after the tensors the JSON header describes; "
            "check each input's binary_data_size"
        )
    sparse = None
    if io.sparse:
        try:
            sparse = sparse_inputs.assemble(io.sparse, tensors, len(features))
        except sparse_inputs.SparseInputError as exc:
            raise ProtocolError(str(exc)) from None
    outputs, binary_outputs = _requested_outputs(doc, io)
    class_counts = {
        out.name: check_class_count(out.name, out.parameters.classification)
        for out in doc.outputs or ()
        if out.parameters is not None and out.parameters.classification is not None
    }
    return InferRequest(doc.id, features, outputs, binary_outputs, class_counts, sparse)


MAX_CLASS_COUNT = 1 << 16


def check_class_count(name: str, value: object) -> int:
    """A valid classification ``class_count`` for output ``name``; ProtocolError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLASS_COUNT:
        raise ProtocolError(
            f"output {name!r} classification must be an integer from 1 to {MAX_CLASS_COUNT}, "
            f"got {value!r}"
        )
    return value


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    length = parse_ascii_int(header_length)
    if length is None:
        raise ProtocolError(f"{BINARY_HEADER} must be an integer, got {header_length!r}")
    if length > len(body):
        raise ProtocolError(f"{BINARY_HEADER} is {length} but the body has only {len(body)} bytes")
    return body[:length], body[length:]


def input_dtype(
    name: str, shape: list[int] | tuple[int, ...], datatype: str, feature_shape: tuple[int, ...]
) -> np.dtype[Any]:
    """The wire dtype of input ``name`` after checking its shape and datatype against the model
    (shared by the REST and gRPC front ends)."""
    if len(shape) != len(feature_shape) + 1 or tuple(shape[1:]) != feature_shape or shape[0] < 1:
        raise ProtocolError(
            f"input shape {list(shape)} does not fit the model: expected [n, "
            f"{', '.join(map(str, feature_shape))}] with n >= 1 rows"
        )
    dtype = NUMERIC_DTYPES.get(datatype)
    if dtype is None:
        raise ProtocolError(
            f"input datatype {datatype!r} is not supported; use FP32 (also accepted: "
            f"{', '.join(sorted(NUMERIC_DTYPES))}; values are converted to FP32)"
        )
    return dtype


def finite_features(
    name: str, floats: np.ndarray[Any, np.dtype[np.float32]], shape: list[int] | tuple[int, ...]
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """``floats`` reshaped to ``shape``, refused when any value is NaN or infinite."""
    finite = np.isfinite(floats)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ProtocolError(
            f"input {name!r} holds a non-finite number (NaN, Inf or out of FP32 range) "
            f"at flat index {bad}"
        )
    return floats.reshape(shape)


def _features(
    tensor: _InputTensor, binary: bytes | memoryview, feature_shape: tuple[int, ...]
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], int]:
    shape = tensor.shape
    dtype = input_dtype(tensor.name, shape, tensor.datatype, feature_shape)
    count = math.prod(shape)
    size = tensor.parameters.binary_data_size if tensor.parameters is not None else None
    if size is None:
        if not tensor.data:
            raise ProtocolError(
                f"input {tensor.name!r} has no 'data' (and no parameters.binary_data_size)"
            )
        try:
            values = decode_json_data(tensor.data, tensor.name, tensor.datatype, len(shape))
        except TensorDataError as exc:
            raise ProtocolError(str(exc)) from None
        if values.size != count:
            raise ProtocolError(
                f"input 'data' has {values.size} values but shape {shape} needs {count}"
            )
        # The decoder bounded every value by the FP32 range: nothing non-finite can be left.
        return values.reshape(shape), 0
    if size != count * dtype.itemsize:
        raise ProtocolError(
            f"binary_data_size {size!r} does not match shape {shape} of {tensor.datatype} "
            f"({count * dtype.itemsize} bytes expected)"
        )
    if size > len(binary):
        raise ProtocolError(f"binary input needs {size} bytes, the body carries {len(binary)}")
    floats = np.frombuffer(binary, dtype=dtype, count=count).astype(np.float32)
    return finite_features(tensor.name, floats, shape), size


def _requested_outputs(
    doc: _InferRequestBody, io: ModelIO
) -> tuple[tuple[str, ...], frozenset[str]]:
    all_binary = doc.parameters is not None and doc.parameters.binary_data_output
    if doc.outputs is None:
        names = io.output_names
        return names, frozenset(names if all_binary else ())
    chosen: list[str] = []
    binary: set[str] = set()
    for out in doc.outputs:
        if out.name not in io.output_names:
            raise ProtocolError(
                f"unknown output {out.name!r}; this model returns {list(io.output_names)}"
            )
        if out.name in chosen:
            raise ProtocolError(f"output {out.name!r} requested twice")
        chosen.append(out.name)
        if all_binary or (out.parameters is not None and out.parameters.binary_data):
            binary.add(out.name)
    return tuple(chosen or io.output_names), frozenset(binary)
