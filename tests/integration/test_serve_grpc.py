"""The KServe v2 gRPC port against a real server over the real broker: ``tritonclient.grpc``
unmodified gets the same answers and versions as ``tritonclient.http``, through one model."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings
from streamtrain.kafka import create_topics
from streamtrain.serve.server import ServingWorker
from tests.integration.snapshot_harness import ROW, publish, serve_settings, wait
from tests.version_fixtures import expected_value

ROWS = np.array([ROW, [0.5, -1.0, 2.0, 3.0]], dtype=np.float32)


@pytest.fixture
def worker_settings(kafka_bootstrap: str, unique_name: str) -> Settings:
    create_topics(kafka_bootstrap, [unique_name])
    return serve_settings(kafka_bootstrap, unique_name, grpc_port=0)


@pytest.fixture
def worker(worker_settings: Settings) -> Iterator[ServingWorker]:
    settings = worker_settings
    serving = build_worker(settings)
    serving.start()
    publish(settings, 3)
    try:
        yield serving
    finally:
        serving.stop()


def _clients(worker: ServingWorker) -> tuple[grpcclient.InferenceServerClient, object]:
    assert worker.grpc is not None
    http = httpclient.InferenceServerClient(worker.url.removeprefix("http://"))
    return grpcclient.InferenceServerClient(worker.grpc.target), http


def _grpc_value(client: grpcclient.InferenceServerClient, rows: np.ndarray) -> tuple[str, list]:
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)  # raw_input_contents
    result = client.infer("m", [tensor])
    response = result.get_response()
    return response.model_version, result.as_numpy("value").tolist()


def test_tritonclient_grpc_matches_http(worker: ServingWorker, worker_settings: Settings) -> None:
    grpc, http = _clients(worker)
    assert grpc.is_server_live()
    wait(lambda: grpc.is_server_ready() and grpc.is_model_ready("m"), "ready over gRPC")

    grpc_meta = grpc.get_model_metadata("m", as_json=True)
    http_meta = http.get_model_metadata("m")  # type: ignore[attr-defined]
    assert grpc_meta["name"] == http_meta["name"] == "m"
    assert grpc_meta["versions"] == http_meta["versions"] == ["3"]
    assert grpc_meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [o["name"] for o in grpc_meta["outputs"]] == [o["name"] for o in http_meta["outputs"]]
    server = grpc.get_server_metadata(as_json=True)
    assert server["name"] == "streamtrain"
    assert server["extensions"] == http.get_server_metadata()["extensions"]  # type: ignore[attr-defined]

    version, values = _grpc_value(grpc, ROWS)
    http_input = httpclient.InferInput("input", list(ROWS.shape), "FP32")
    http_input.set_data_from_numpy(ROWS)
    http_result = http.infer("m", [http_input])  # type: ignore[attr-defined]
    assert version == http_result.get_response()["model_version"] == "3"
    assert values == http_result.as_numpy("value").tolist()
    assert values[0][0] == pytest.approx(expected_value(3, ROW), rel=1e-6)

    # The live version named explicitly answers; another one is NOT_FOUND.
    tensor = grpcclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(ROWS[:1])
    assert grpc.infer("m", [tensor], model_version="3").get_response().model_version == "3"
    with pytest.raises(InferenceServerException, match="version '2' is not loaded") as caught:
        grpc.infer("m", [tensor], model_version="2")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert not grpc.is_model_ready("m", "2")
    # Unknown model, unknown or non-ASCII version: ready=false as Triton answers, never an error.
    assert grpc.is_model_ready("nosuch") is False
    assert grpc.is_model_ready("nosuch", "3") is False
    assert grpc.is_model_ready("m", "99") is False
    assert grpc.is_model_ready("m", "\u00b3") is False  # superscript three
    assert http.is_model_ready("nosuch") is False  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException, match="unknown model 'x'"):
        grpc.get_model_metadata("x")

    # A new snapshot reaches both protocols.
    publish(worker_settings, 4)
    wait(lambda: _grpc_value(grpc, ROWS)[0] == "4", "version 4 over gRPC")
    assert http.infer("m", [http_input]).get_response()["model_version"] == "4"  # type: ignore[attr-defined]
    grpc.close()


def test_typed_contents_and_bad_requests_over_grpc(worker: ServingWorker) -> None:
    import grpc as grpc_lib

    assert worker.grpc is not None
    wait(lambda: worker.slot.ready, "the first snapshot")
    with grpc_lib.insecure_channel(worker.grpc.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def request(**tensor: object) -> service_pb2.ModelInferRequest:
            message = service_pb2.ModelInferRequest(model_name="m", id="req-1")
            message.inputs.add(name="input", **tensor)
            return message

        typed = request(datatype="FP32", shape=[2, 4])
        typed.inputs[0].contents.fp32_contents.extend(ROWS.reshape(-1).tolist())
        reply = stub.ModelInfer(typed, timeout=10)
        assert reply.model_version == "3" and reply.id == "req-1"
        values = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(2, 1)
        assert values[:, 0].tolist() == pytest.approx(
            [expected_value(3, ROWS[0]), expected_value(3, ROWS[1])], rel=1e-6
        )

        integers = request(datatype="INT32", shape=[1, 4])
        integers.inputs[0].contents.int_contents.extend([1, 1, 1, 1])
        reply = stub.ModelInfer(integers, timeout=10)
        assert np.frombuffer(reply.raw_output_contents[0], "<f4")[0] == pytest.approx(
            expected_value(3, ROW), rel=1e-6
        )

        bad = {
            "shape [1, 3]": (request(datatype="FP32", shape=[1, 3]), "does not fit the model"),
            "too few values": (request(datatype="FP32", shape=[1, 4]), "has 0 fp32_contents"),
            "INT8 range": (request(datatype="INT8", shape=[1, 4]), "INT8 cannot take"),
            "NaN": (request(datatype="FP32", shape=[1, 4]), "non-finite"),
            "BYTES": (request(datatype="BYTES", shape=[1, 4]), "not supported"),
        }
        bad["INT8 range"][0].inputs[0].contents.int_contents.extend([1, 2, 300, 4])
        bad["NaN"][0].inputs[0].contents.fp32_contents.extend([1, float("nan"), 1, 1])
        for what, (message, expected) in bad.items():
            with pytest.raises(grpc_lib.RpcError) as caught:
                stub.ModelInfer(message, timeout=10)
            assert caught.value.code() == grpc_lib.StatusCode.INVALID_ARGUMENT, what
            assert expected in (caught.value.details() or ""), (what, caught.value.details())

        # A message over max_body_bytes is refused by gRPC itself.
        huge = request(datatype="FP32", shape=[1, 4])
        huge.raw_input_contents.append(b"\0" * (9 * 1024 * 1024))
        with pytest.raises(grpc_lib.RpcError) as caught:
            stub.ModelInfer(huge, timeout=10)
        assert caught.value.code() == grpc_lib.StatusCode.RESOURCE_EXHAUSTED
