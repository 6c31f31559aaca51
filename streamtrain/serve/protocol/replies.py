"""Open Inference Protocol (KServe v2) REST replies: an infer request's outputs as a JSON body,
or a JSON header followed by raw tensors under Triton's binary extension
(:mod:`~streamtrain.serve.protocol.bodies` parses the requests).

>>> import numpy as np
>>> from streamtrain.serve.protocol.bodies import InferRequest, ModelIO, TensorMeta
>>> io = ModelIO(feature_shape=(2,), outputs=(TensorMeta("value", "FP32", (-1, 1)),))
>>> request = InferRequest(None, np.zeros((1, 2), np.float32), ("value",), frozenset())
>>> body, headers = encode_infer_response("m", "3", request, {"value": np.ones((1, 1))}, io)
>>> body[body.index(b'"outputs'):]
b'"outputs":[{"name":"value","shape":[1,1],"datatype":"FP32","data":[1.0]}]}'
>>> headers
[(b'content-type', b'application/json')]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

from streamtrain.serve.protocol.bodies import BINARY_HEADER, InferRequest, ModelIO
from streamtrain.serve.protocol.classification import serialize_bytes, top_k_strings

_BINARY_HEADER_NAME = BINARY_HEADER.lower().encode("latin-1")
_JSON_CONTENT = (b"content-type", b"application/json")
_BINARY_CONTENT = (b"content-type", b"application/octet-stream")
_OUTPUT_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}


class _OutputTensor(msgspec.Struct, omit_defaults=True):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, int] | None = None


class _InferResponseBody(msgspec.Struct, omit_defaults=True):
    model_name: str
    model_version: str
    outputs: list[_OutputTensor]
    id: str | None = None


_ENCODER = msgspec.json.Encoder()


def output_tensor(
    name: str, datatype: str, values: np.ndarray[Any, Any], class_count: int | None
) -> tuple[str, np.ndarray[Any, Any], bytes]:
    """An output as (datatype, array, raw bytes); with ``class_count`` the top-k
    ``"score:index"`` BYTES tensor of the classification extension."""
    if class_count is not None:
        strings = top_k_strings(values, class_count)
        return "BYTES", strings, serialize_bytes(strings)
    array = np.ascontiguousarray(values, dtype=_OUTPUT_DTYPES[datatype])
    return datatype, array, array.tobytes()


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    results: Mapping[str, np.ndarray[Any, Any]],
    io: ModelIO,
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and its HTTP headers (binary extension when any output is binary)."""
    datatypes = io.output_datatypes
    outputs: list[_OutputTensor] = []
    buffers: list[bytes] = []
    for name in request.outputs:
        count = request.class_counts.get(name) if request.class_counts else None
        if count is None and name not in request.binary_outputs:
            # a plain JSON output: its values, never its raw bytes
            array = np.asarray(results[name], dtype=_OUTPUT_DTYPES[datatypes[name]])
            data = array.reshape(-1).tolist()
            outputs.append(_OutputTensor(name, list(array.shape), datatypes[name], data))
            continue
        datatype, array, raw = output_tensor(name, datatypes[name], results[name], count)
        entry = _OutputTensor(name, list(array.shape), datatype)
        if name in request.binary_outputs:
            entry.parameters = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry.data = array.reshape(-1).tolist()
        outputs.append(entry)
    header = _ENCODER.encode(_InferResponseBody(model_name, model_version, outputs, request.id))
    if not buffers:
        return header, [_JSON_CONTENT]
    headers = [_BINARY_CONTENT, (_BINARY_HEADER_NAME, b"%d" % len(header))]
    return b"".join([header, *buffers]), headers
