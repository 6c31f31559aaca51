"""Triton's streaming ``ModelStreamInfer`` on the gRPC port, against a real server over the real
broker: ``tritonclient.grpc``'s ``start_stream`` / ``async_stream_infer`` get one answer per
request in the order sent, a bad request mid-stream is answered with its error (id echoed) and
the stream goes on, and every streamed request is counted on the real ``/metrics``."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings
from streamtrain.kafka import create_topics
from streamtrain.serve.server import ServingWorker
from tests.integration.snapshot_harness import ROW, publish, serve_settings, wait
from tests.integration.trainer_harness import scrape
from tests.version_fixtures import expected_value

_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
_Answer = tuple[grpcclient.InferResult | None, InferenceServerException | None]


@pytest.fixture
def worker(kafka_bootstrap: str, unique_name: str) -> Iterator[ServingWorker]:
    create_topics(kafka_bootstrap, [unique_name])
    settings: Settings = serve_settings(kafka_bootstrap, unique_name, grpc_port=0)
    serving = build_worker(settings)
    serving.start()
    publish(settings, 3)
    try:
        wait(lambda: serving.slot.ready, "the first snapshot")
        yield serving
    finally:
        serving.stop()


def _input(rows: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


def _counts(worker: ServingWorker) -> dict[str, float]:
    metrics = scrape(worker.metrics_url)
    return {
        outcome: metrics.get(f'streamtrain_serve_requests_total{{outcome="{outcome}"}}', 0.0)
        for outcome in ("ok", "bad_request", "not_found")
    }


def test_stream_answers_in_order_with_errors_in_place(worker: ServingWorker) -> None:
    assert worker.grpc is not None
    before = _counts(worker)
    answers: queue.Queue[_Answer] = queue.Queue()
    client = grpcclient.InferenceServerClient(worker.grpc.target)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    good = [np.array([[float(i), 1.0, 2.0, 3.0]], dtype=np.float32) for i in range(6)]
    for i, rows in enumerate(good[:3]):
        client.async_stream_infer("m", [_input(rows)], request_id=f"r{i}")
    # Mid-stream: a shape the model does not take, then a model this server does not serve.
    client.async_stream_infer("m", [_input(np.ones((1, 3), np.float32))], request_id="bad-shape")
    client.async_stream_infer("nosuch", [_input(good[0])], request_id="bad-model")
    for i, rows in enumerate(good[3:], start=3):
        client.async_stream_infer("m", [_input(rows)], request_id=f"r{i}")
    got = [answers.get(timeout=30) for _ in range(8)]
    client.stop_stream()
    client.close()

    results = [(i, r) for i, (r, e) in enumerate(got) if e is None]
    errors = [(i, str(e)) for i, (r, e) in enumerate(got) if e is not None]
    assert [i for i, _ in errors] == [3, 4]
    assert "does not fit the model" in errors[0][1]
    assert "unknown model 'nosuch'" in errors[1][1]
    assert [r.get_response().id for _, r in results if r] == [f"r{i}" for i in range(6)]
    for (_, result), rows in zip(results, good, strict=True):
        assert result is not None and result.get_response().model_version == "3"
        value = result.as_numpy("value")
        assert value is not None
        assert value[0][0] == pytest.approx(expected_value(3, rows[0]), rel=1e-6)
    after = _counts(worker)
    assert after["ok"] - before["ok"] == 6
    assert after["bad_request"] - before["bad_request"] == 1
    assert after["not_found"] - before["not_found"] == 1


def test_undecodable_message_mid_stream_is_answered_and_the_stream_goes_on(
    worker: ServingWorker,
) -> None:
    assert worker.grpc is not None
    request = service_pb2.ModelInferRequest(model_name="m", id="first")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(ROW)
    later = service_pb2.ModelInferRequest()
    later.CopyFrom(request)
    later.id = "after"
    failing = service_pb2.ModelInferRequest()
    failing.CopyFrom(request)
    failing.id, failing.model_version = "old", "2"
    sent = [
        request.SerializeToString(),
        b"\xff\xff\xff garbage",  # not a ModelInferRequest
        failing.SerializeToString(),
        later.SerializeToString(),
    ]
    with grpc.insecure_channel(worker.grpc.target) as channel:
        call = channel.stream_stream(_STREAM)(iter(sent), timeout=30)
        replies = [service_pb2.ModelStreamInferResponse.FromString(b) for b in call]
        assert call.code() == grpc.StatusCode.OK

    assert len(replies) == 4
    assert replies[0].error_message == "" and replies[0].infer_response.id == "first"
    assert "not a valid ModelStreamInfer message" in replies[1].error_message
    assert "version '2' is not loaded" in replies[2].error_message
    # The failed request's id, model and version come back with its error.
    assert replies[2].infer_response.id == "old"
    assert replies[2].infer_response.model_version == "2"
    assert replies[3].error_message == "" and replies[3].infer_response.id == "after"
    value = np.frombuffer(replies[3].infer_response.raw_output_contents[0], "<f4")
    assert value[0] == pytest.approx(expected_value(3, ROW), rel=1e-6)
