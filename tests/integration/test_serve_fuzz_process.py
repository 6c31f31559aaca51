"""Guarantee 2 through the real server process: fuzzed bodies over a socket never get a 5xx.

The unit fuzzers (tests/unit/test_serve_fuzz.py) drive the app in process; here a real
``streamtrain serve`` is started on the real broker's snapshot and sent, over HTTP and gRPC
sockets, valid requests with random parts replaced or removed (hypothesis, fixed seed and
example count), cut short, or as random bytes:

* REST sparse bodies to a ``dlrm`` with two sparse features (IDs, ``__lengths``, ``__weights``);
* REST dense bodies (JSON and the binary extension) and gRPC ``ModelInfer`` messages, both as
  mutated protobufs and as mutated serialized bytes, to a ``linear`` model with gRPC on.

Every answer must be below 500 (gRPC: OK, INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED),
with an error text; afterwards the process still answers a valid request, its real /metrics
counts no ``error`` outcome, and its output holds no traceback.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from streamtrain.config import Settings, load_settings
from streamtrain.kafka import create_topics
from streamtrain.sample.spec import spec_for_model
from streamtrain.serve.protocol.bodies import BINARY_HEADER
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.models import build_model
from tests.integration.cli_process import await_output, running_cli
from tests.integration.process_output import REQUEST_S, ProcessOutput, await_condition
from tests.integration.snapshot_harness import settings_writer
from tests.integration.trainer_harness import scrape

SPARSE_MODEL = {
    "name": "dlrm",
    "task": "binary",
    "input_shape": [2],
    "sparse": [
        {"name": "user", "table": "users", "max_length": 1},
        {"name": "items", "table": "items", "max_length": 3},
    ],
    "params": {"rows": 64, "embedding_dim": 4, "bottom_sizes": [8], "top_sizes": [8]},
}
DENSE_MODEL = {
    "name": "linear",
    "task": "regression",
    "input_shape": [4],
    "target_dim": 1,
    "params": {"standardize": False, "scale_targets": False},
}
EXAMPLES = 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
GRPC_ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
INFER = "/inference.GRPCInferenceService/ModelInfer"
INVALID = grpc.StatusCode.INVALID_ARGUMENT

hostile = st.one_of(
    st.sampled_from(
        [10**400, -(10**400), 2**64, 2**63, -1, 1.5, float("nan"), True, "", "7", None, [], {}]
    ),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 2**64), max_size=4),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON document (dict keys and list indexes), parents before children."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid document with one to three places replaced by a hostile value or removed."""
    doc = copy.deepcopy(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _paths(doc) if p]
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent = doc
        for step in place[:-1]:
            parent = parent[step]
        if draw(st.integers(0, 3)) == 0:
            del parent[place[-1]]
        else:
            parent[place[-1]] = draw(hostile)
    return doc


@st.composite
def sparse_bodies(draw: st.DrawFn) -> dict[str, Any]:
    rows = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows))
    items = draw(st.lists(st.integers(0, 2**40), min_size=sum(lengths), max_size=sum(lengths)))
    users: list[Any] = draw(
        st.lists(st.integers(0, 99), min_size=rows, max_size=rows)
        | st.lists(st.text(max_size=5), min_size=rows, max_size=rows)
    )
    inputs = [
        {"name": "input", "shape": [rows, 2], "datatype": "FP32", "data": [0.5] * (rows * 2)},
        {"name": "items", "shape": [len(items)], "datatype": "INT64", "data": items},
        {"name": "items__lengths", "shape": [rows], "datatype": "INT64", "data": lengths},
        {
            "name": "user",
            "shape": [rows],
            "datatype": "BYTES" if isinstance(users[0], str) else "INT64",
            "data": users,
        },
        {"name": "user__lengths", "shape": [rows], "datatype": "INT64", "data": [1] * rows},
    ]
    if draw(st.booleans()):
        weights = draw(st.lists(st.floats(0, 4), min_size=len(items), max_size=len(items)))
        inputs.append(
            {"name": "items__weights", "shape": [len(items)], "datatype": "FP32", "data": weights}
        )
    return {"inputs": inputs, "id": draw(st.text(max_size=4))}


@st.composite
def dense_bodies(draw: st.DrawFn) -> dict[str, Any]:
    rows = draw(st.integers(1, 3))
    datatype = draw(st.sampled_from(["FP32", "FP64", "INT32", "FP16"]))
    data = draw(st.lists(st.integers(-9, 9), min_size=rows * 4, max_size=rows * 4))
    return {"inputs": [{"name": "input", "shape": [rows, 4], "datatype": datatype, "data": data}]}


def _serialized(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def raw_bodies(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Mutated documents, valid ones cut short at any byte, and random bytes."""
    return st.one_of(
        mutated(valid).map(_serialized),
        valid.map(_serialized).flatmap(lambda raw: st.integers(0, len(raw)).map(lambda n: raw[:n])),
        st.binary(max_size=64),
    )


def _publish(bootstrap: str, topic: str, model: dict[str, Any]) -> Settings:
    """One snapshot of ``model``'s initial weights on ``topic``; the settings it belongs to."""
    create_topics(bootstrap, [topic])
    chosen = load_settings(overrides={"kafka": {"bootstrap_servers": bootstrap}, "model": model})
    writer = settings_writer(chosen, topic)
    spec = spec_for_model(chosen.model)
    tensors = dict(build_model(model["name"], spec, model["params"]).state_dict())
    writer.write(SnapshotRequest(4, "fuzz", tensors, None, {}, time.time()))
    writer.close(5)
    return chosen


def _serve_env(bootstrap: str, topic: str, model: dict[str, Any], **serve: str) -> dict[str, str]:
    env = {
        **os.environ,
        "STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "STREAMTRAIN_TOPICS__SNAPSHOTS": topic,
        "STREAMTRAIN_SERVE__PORT": "0",
        "STREAMTRAIN_SERVE__MODEL_NAME": "m",
        "STREAMTRAIN_SERVE__MAX_BODY_BYTES": "65536",
    }
    for key, value in model.items():
        text = value if isinstance(value, str) else json.dumps(value)
        env[f"STREAMTRAIN_MODEL__{key.upper()}"] = text
    for key, value in serve.items():
        env[f"STREAMTRAIN_SERVE__{key.upper()}"] = value
    return env


def _ready(url: str) -> bool:
    return httpx.get(f"{url}/v2/health/ready", timeout=REQUEST_S).status_code == 200


def _check_http(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> int:
    reply = client.post(f"{url}/v2/models/m/infer", content=body, headers=headers)
    assert reply.status_code < 500, (body[:200], headers, reply.status_code, reply.text)
    if reply.status_code != 200:
        assert reply.json()["error"], reply.text
    return reply.status_code


def _after(url: str, output: ProcessOutput, valid: dict[str, Any]) -> None:
    """The process survived: it answers a valid request, counted no error, printed no trace."""
    reply = httpx.post(f"{url}/v2/models/m/infer", json=valid, timeout=REQUEST_S)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model_version"] == "4"
    metrics = scrape(f"{url}/metrics")
    assert metrics.get('streamtrain_serve_requests_total{outcome="error"}', 0.0) == 0.0
    assert metrics['streamtrain_serve_requests_total{outcome="bad_request"}'] > 0
    assert "Traceback" not in output.text(), output.text()


@pytest.fixture
def sparse_server(kafka_bootstrap: str, unique_name: str) -> Iterator[tuple[str, ProcessOutput]]:
    _publish(kafka_bootstrap, unique_name, SPARSE_MODEL)
    env = _serve_env(kafka_bootstrap, unique_name, SPARSE_MODEL)
    with running_cli(["serve"], env) as (process, output):
        url = await_output(output, r"serving model 'm' on (\S+)")
        await_condition(lambda: _ready(url), "the sparse server ready")
        yield url, output
        assert process.poll() is None, output.text()


def test_fuzzed_sparse_bodies_over_a_socket_never_get_a_5xx(
    sparse_server: tuple[str, ProcessOutput],
) -> None:
    url, output = sparse_server
    seen: set[int] = set()
    with httpx.Client(timeout=REQUEST_S) as client:

        @FUZZ
        @given(body=raw_bodies(sparse_bodies()) | sparse_bodies().map(_serialized))
        def check(body: bytes) -> None:
            seen.add(_check_http(client, url, body, {"content-type": "application/json"}))

        check()
    assert 200 in seen and 400 in seen, seen  # the success path and the refusals were reached
    valid = {
        "inputs": [
            {"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 0]},
            {"name": "items", "shape": [2], "datatype": "INT64", "data": [3, 4]},
            {"name": "items__lengths", "shape": [1], "datatype": "INT64", "data": [2]},
        ]
    }
    _after(url, output, valid)


@st.composite
def grpc_requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    """A ``ModelInfer`` for the dense model, valid or with some fields made hostile."""
    if draw(st.integers(0, 4)) == 0:
        return _valid_grpc(draw(st.integers(1, 3)), draw(st.booleans()))
    rows = draw(st.integers(0, 3))
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(["m", "m", "m", "", "other", "m\u00b2"])),
        model_version=draw(st.sampled_from(["", "", "4", "04", "\u00b9", "99999999999999999999"])),
        id=draw(st.text(max_size=4)),
    )
    tensor = request.inputs.add()
    tensor.name = draw(st.sampled_from(["input", "input", "x", ""]))
    tensor.datatype = draw(st.sampled_from(["FP32", "FP32", "FP64", "INT64", "BYTES", "fp32", ""]))
    shape = draw(
        st.just([rows, 4])
        | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)
        | st.lists(st.integers(-1, 5), max_size=3)
    )
    tensor.shape.extend(shape)
    values = draw(st.lists(st.floats(width=32, allow_nan=True), max_size=16))
    where = draw(st.sampled_from(["fp32", "fp64", "int64", "bytes", "raw", "raw", "none"]))
    if where == "fp32":
        tensor.contents.fp32_contents.extend(values)
    elif where == "fp64":
        tensor.contents.fp64_contents.extend(values)
    elif where == "int64":
        tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-9, 9), max_size=16)))
    elif where == "bytes":
        tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=6), max_size=4)))
    elif where == "raw":
        raw = np.asarray(values, np.float32).tobytes() + draw(st.binary(max_size=3))
        request.raw_input_contents.append(raw)
    if draw(st.integers(0, 3)) == 0:
        request.raw_input_contents.append(draw(st.binary(max_size=32)))
    if draw(st.integers(0, 3)) == 0:
        output = request.outputs.add()
        output.name = draw(st.sampled_from(["value", "nope", ""]))
    if draw(st.integers(0, 4)) == 0:
        request.parameters["binary_data_size"].int64_param = draw(st.integers(-5, 2**40))
    return request


def _valid_grpc(rows: int, raw: bool) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend([rows, 4])
    values = np.arange(rows * 4, dtype=np.float32)
    if raw:
        request.raw_input_contents.append(values.tobytes())
    else:
        tensor.contents.fp32_contents.extend(values.tolist())
    return request


def _mangled(request: service_pb2.ModelInferRequest, data: st.DataObject) -> bytes:
    """The serialized message with bytes flipped, cut, or appended."""
    raw = bytearray(request.SerializeToString())
    choice = data.draw(st.integers(0, 2))
    if choice == 0 and raw:
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    elif choice == 1:
        del raw[data.draw(st.integers(0, len(raw))) :]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=16))
    return bytes(raw)


@pytest.fixture
def dense_server(
    kafka_bootstrap: str, unique_name: str
) -> Iterator[tuple[str, str, ProcessOutput]]:
    _publish(kafka_bootstrap, unique_name, DENSE_MODEL)
    env = _serve_env(kafka_bootstrap, unique_name, DENSE_MODEL, grpc_port="0")
    with running_cli(["serve"], env) as (process, output):
        url = await_output(output, r"serving model 'm' on (\S+)")
        target = await_output(output, r"grpc: +(\S+)")
        await_condition(lambda: _ready(url), "the dense server ready")
        yield url, target, output
        assert process.poll() is None, output.text()


def test_fuzzed_grpc_and_rest_bodies_to_a_real_server_never_get_a_5xx(
    dense_server: tuple[str, str, ProcessOutput],
) -> None:
    url, target, output = dense_server
    codes: set[grpc.StatusCode] = set()
    statuses: set[int] = set()
    with grpc.insecure_channel(target) as channel, httpx.Client(timeout=REQUEST_S) as client:
        infer = channel.unary_unary(INFER)  # bytes in, bytes out: any message can be sent

        @FUZZ
        @given(request=grpc_requests(), data=st.data())
        def check_grpc(request: service_pb2.ModelInferRequest, data: st.DataObject) -> None:
            for raw in (request.SerializeToString(), _mangled(request, data)):
                try:
                    infer(raw, timeout=10)
                    code, details = grpc.StatusCode.OK, "ok"
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details()
                assert code in GRPC_ALLOWED and details, (raw[:120], code, details)
                codes.add(code)

        check_grpc()

        binary = st.fixed_dictionaries(
            {},
            optional={
                BINARY_HEADER: st.integers(-3, 80).map(str),
                "content-type": st.just("application/octet-stream"),
            },
        )

        @FUZZ
        @given(body=raw_bodies(dense_bodies()), headers=binary, trailer=st.binary(max_size=24))
        def check_rest(body: bytes, headers: dict[str, str], trailer: bytes) -> None:
            if BINARY_HEADER in headers:
                body += trailer
            statuses.add(_check_http(client, url, body, headers))

        check_rest()

        # Every unary method has the guard: one the server does not implement keeps saying
        # so for a valid message, and refuses bytes that are not one as a bad request.
        status = channel.unary_unary("/inference.GRPCInferenceService/SystemSharedMemoryStatus")
        for raw, expected in ((b"", grpc.StatusCode.UNIMPLEMENTED), (b"\xff", INVALID)):
            with pytest.raises(grpc.RpcError) as refused:
                status(raw, timeout=10)
            assert refused.value.code() == expected, refused.value.details()
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes, codes
    assert 400 in statuses, statuses
    valid = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    _after(url, output, valid)
