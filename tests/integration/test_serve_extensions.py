"""Triton's extensions over REST and gRPC against a real server over the real broker: model
configuration, inference statistics (moving with traffic), repository index, classification."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings, load_settings
from streamtrain.kafka import create_topics
from streamtrain.sample.spec import spec_for_model
from streamtrain.serve.server import ServingWorker
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.models import build_model
from tests.integration.snapshot_harness import settings_writer, wait

MODEL = {
    "name": "linear",
    "task": "multiclass",
    "input_shape": [4],
    "num_classes": 5,
    "params": {"standardize": False},
}
ROWS = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]], dtype=np.float32)


def _publish(settings: Settings, version: int) -> None:
    """Random (seeded) weights, so the classes have distinct scores."""
    model = build_model("linear", spec_for_model(settings.model), settings.model.params)
    generator = torch.Generator().manual_seed(version)
    tensors = {
        name: torch.randn(t.shape, generator=generator) for name, t in model.state_dict().items()
    }
    writer = settings_writer(settings)
    try:
        writer.write(SnapshotRequest(version, "run-a", tensors, None, {0: version}, time.time()))
    finally:
        writer.close(5.0)


@pytest.fixture
def worker(kafka_bootstrap: str, unique_name: str) -> Iterator[ServingWorker]:
    create_topics(kafka_bootstrap, [unique_name])
    settings = load_settings(
        overrides={
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "topics": {"snapshots": unique_name},
            "model": MODEL,
            "serve": {"port": 0, "grpc_port": 0, "model_name": "m"},
        }
    )
    serving = build_worker(settings)
    serving.start()
    try:
        _publish(settings, 7)
        wait(lambda: serving.slot.ready, "the first snapshot")
        yield serving
    finally:
        serving.stop()


def _clients(worker: ServingWorker) -> tuple[Any, Any]:
    assert worker.grpc is not None
    return (
        grpcclient.InferenceServerClient(worker.grpc.target),
        httpclient.InferenceServerClient(worker.url.removeprefix("http://")),
    )


def _ints(document: Any) -> Any:
    """protobuf's JSON form writes 64-bit integers as strings; REST writes numbers."""
    if isinstance(document, dict):
        return {k: _ints(v) for k, v in document.items()}
    if isinstance(document, list):
        return [_ints(v) for v in document]
    if isinstance(document, str) and document.lstrip("-").isdigit():
        return int(document)
    return document


def test_model_config_and_repository_index_agree(worker: ServingWorker) -> None:
    grpc, http = _clients(worker)
    http_config = http.get_model_config("m")
    grpc_config = _ints(grpc.get_model_config("m", as_json=True)["config"])
    assert http_config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    assert [(o["name"], o["data_type"], o["dims"]) for o in http_config["output"]] == [
        ("probabilities", "TYPE_FP32", [-1, 5]),
        ("predicted_class", "TYPE_INT64", [-1]),
    ]
    for key in ("name", "platform", "input", "output"):
        assert grpc_config[key] == http_config[key], key
    assert http.get_model_repository_index() == [
        {"name": "m", "version": "7", "state": "READY", "reason": ""}
    ]
    grpc_index = grpc.get_model_repository_index(as_json=True)["models"]
    assert grpc_index == [{"name": "m", "version": "7", "state": "READY"}]  # "" is omitted
    grpc.close()


def _infer_http(http: Any, class_count: int = 0) -> Any:
    tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    outputs = [httpclient.InferRequestedOutput("probabilities", class_count=class_count)]
    return http.infer("m", [tensor], outputs=outputs)


def _infer_grpc(grpc: Any, class_count: int = 0) -> Any:
    tensor = grpcclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=class_count)]
    return grpc.infer("m", [tensor], outputs=outputs)


def test_class_count_answers_top_k_over_both_protocols(worker: ServingWorker) -> None:
    grpc, http = _clients(worker)
    probabilities = _infer_http(http).as_numpy("probabilities")
    assert np.allclose(probabilities, _infer_grpc(grpc).as_numpy("probabilities"))
    top2 = np.argsort(-probabilities, axis=1)[:, :2]
    for result in (_infer_http(http, class_count=2), _infer_grpc(grpc, class_count=2)):
        labels = result.as_numpy("probabilities")
        assert labels.shape == (2, 2)
        parsed = [[item.decode().split(":") for item in row] for row in labels]
        assert [[int(index) for _, index in row] for row in parsed] == top2.tolist()
        scores = [[float(score) for score, _ in row] for row in parsed]
        assert np.allclose(scores, np.take_along_axis(probabilities, top2, axis=1), atol=1e-6)
    grpc.close()


def _success(stats: dict[str, Any]) -> tuple[int, int, int, int]:
    (entry,) = _ints(stats["model_stats"])
    infer = entry["inference_stats"]
    return (
        entry["inference_count"],
        infer["success"].get("count", 0),
        infer["compute_infer"].get("count", 0),
        infer["success"].get("ns", 0),
    )


def test_statistics_move_with_traffic_on_both_protocols(worker: ServingWorker) -> None:
    grpc, http = _clients(worker)
    rows, count, infers, ns = _success(http.get_inference_statistics("m"))
    for _ in range(3):
        _infer_http(http)
    for _ in range(2):
        _infer_grpc(grpc)
    after_http = _success(http.get_inference_statistics("m", "7"))
    after_grpc = _success(grpc.get_inference_statistics("m", as_json=True))
    assert after_http == after_grpc
    assert after_http[:3] == (rows + 5 * len(ROWS), count + 5, infers + 5)
    assert after_http[3] > ns
    assert http.get_inference_statistics("")["model_stats"][0]["version"] == "7"  # all models
    grpc.close()
