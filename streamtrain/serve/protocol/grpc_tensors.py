"""KServe v2 gRPC tensors: a ``ModelInferRequest`` to validated features, outputs to a reply.

Inputs arrive either as ``raw_input_contents`` (little-endian bytes, what ``tritonclient.grpc``
sends) or typed ``contents`` (``fp32_contents``, ``int64_contents``, ...). Shape, datatype and
finiteness are checked by the same functions as the REST body
(:mod:`streamtrain.serve.protocol.bodies`), and integer values outside their datatype's range
are refused, as over REST. Outputs are returned as ``raw_output_contents``, as Triton does;
``tritonclient`` reads them with ``as_numpy``. The message size is bounded by the gRPC server
(``max_receive_message_length``), so memory spent on a request is bounded by what arrived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from streamtrain.serve.protocol.bodies import (
    INPUT_NAME,
    InferRequest,
    ModelIO,
    ProtocolError,
    check_class_count,
    finite_features,
    input_dtype,
)
from streamtrain.serve.protocol.replies import output_tensor

# The ``InferTensorContents`` field that carries each numeric datatype (FP16 only travels raw).
_CONTENTS_FIELD = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}
Features = np.ndarray[Any, np.dtype[np.float32]]


def parse_grpc_request(request: service_pb2.ModelInferRequest, io: ModelIO) -> InferRequest:
    """Validate a gRPC infer request against the model; raise ProtocolError naming the fault."""
    if io.sparse:
        raise ProtocolError(
            "this model takes sparse ID inputs, which are served over the REST endpoint "
            "(POST /v2/models/<name>/infer; docs/serving.md)"
        )
    if not request.inputs:
        raise ProtocolError(f"'inputs' must hold one tensor named {INPUT_NAME!r}")
    unknown = [t.name for t in request.inputs if t.name != INPUT_NAME]
    if unknown:
        raise ProtocolError(
            f"unknown input {unknown[0]!r}; this model takes one input named {INPUT_NAME!r}"
        )
    if len(request.inputs) > 1:
        raise ProtocolError(f"input {INPUT_NAME!r} given {len(request.inputs)} times; give it once")
    if len(request.raw_input_contents) > 1:
        raise ProtocolError(
            f"{len(request.raw_input_contents)} raw_input_contents for one input; send one"
        )
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    features = _features(request.inputs[0], raw, io.feature_shape)
    names = [o.name for o in request.outputs]
    for name in names:
        if name not in io.output_names:
            raise ProtocolError(
                f"unknown output {name!r}; this model returns {list(io.output_names)}"
            )
    if len(set(names)) != len(names):
        raise ProtocolError("an output is requested twice; request each once")
    class_counts = {
        o.name: check_class_count(o.name, _int_parameter(o.parameters["classification"]))
        for o in request.outputs
        if "classification" in o.parameters
    }
    return InferRequest(
        request.id or None, features, tuple(names) or io.output_names, frozenset(), class_counts
    )


def _int_parameter(parameter: service_pb2.InferParameter) -> object:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind is not None else None


def _features(
    tensor: service_pb2.ModelInferRequest.InferInputTensor,
    raw: bytes | None,
    feature_shape: tuple[int, ...],
) -> Features:
    shape = list(tensor.shape)
    dtype = input_dtype(tensor.name, shape, tensor.datatype, feature_shape)
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise ProtocolError(
                f"input {tensor.name!r} has both contents and raw_input_contents; send one"
            )
        if len(raw) != count * dtype.itemsize:
            raise ProtocolError(
                f"raw_input_contents holds {len(raw)} bytes but shape {shape} of "
                f"{tensor.datatype} needs {count * dtype.itemsize}"
            )
        floats = np.frombuffer(raw, dtype=dtype, count=count).astype(np.float32)
        return finite_features(tensor.name, floats, shape)
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise ProtocolError(f"input datatype {tensor.datatype} travels only as raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise ProtocolError(
            f"input {tensor.name!r} has {len(values)} {field} values but shape {shape} needs "
            f"{count} (or send raw_input_contents)"
        )
    if dtype.kind in "iu":
        wide = np.asarray(values, dtype=np.int64 if dtype.kind == "i" else np.uint64)
        info = np.iinfo(dtype)
        outside = (wide < info.min) | (wide > info.max)
        if outside.any():
            bad = int(np.flatnonzero(outside)[0])
            raise ProtocolError(
                f"input {tensor.name!r} holds a value {tensor.datatype} cannot take at flat "
                f"index {bad}: {int(wide[bad])}"
            )
        floats = wide.astype(np.float32)
    else:
        with np.errstate(over="ignore"):
            floats = np.asarray(values, dtype=np.float64).astype(np.float32)
    return finite_features(tensor.name, floats, shape)


def encode_grpc_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    results: Mapping[str, np.ndarray[Any, Any]],
    io: ModelIO,
) -> service_pb2.ModelInferResponse:
    """The reply: one output tensor description and one raw buffer per requested output."""
    datatypes = {o.name: o.datatype for o in io.outputs}
    reply = service_pb2.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id or ""
    )
    for name in request.outputs:
        datatype, array, raw = output_tensor(
            name, datatypes[name], results[name], request.class_counts.get(name)
        )
        reply.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        reply.raw_output_contents.append(raw)
    return reply
