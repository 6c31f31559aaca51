"""The prediction log behind the REST app: what the request path hands it (ids, FP32 values
the model was given, sparse IDs), with a producer double standing in for Kafka."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.serve.prediction_log.writer import PredictionLog
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.train.models import build_model
from streamtrain.wire import decode_binary
from streamtrain.wire.prediction_record import decode_prediction
from tests.serve_fixtures import app_for, served_model
from tests.unit.held_producer import HeldProducer, wait_for

SPEC = SampleSpec((3,), "multiclass", num_classes=4)


@pytest.fixture
def producer() -> HeldProducer:
    return HeldProducer()


def _app(prediction_log: PredictionLog | None) -> TestClient:
    model = torch.nn.Linear(3, 4)
    slot = WeightSlot(model)
    slot.load(
        {k: torch.ones_like(v) for k, v in model.state_dict().items()}, SnapshotHeader(3, "r")
    )
    return TestClient(app_for(served_model(slot, SPEC, "m", prediction_log=prediction_log)))


def _infer(client: TestClient, data: list[float], datatype: str = "FP32", **extra: object) -> Any:
    tensor = {"name": "input", "shape": [1, 3], "datatype": datatype, "data": data}
    return client.post("/v2/models/m/infer", json={"inputs": [tensor], **extra})


def test_with_the_log_off_ids_are_echoed_unchecked_and_none_generated() -> None:
    client = _app(None)
    assert "id" not in _infer(client, [1, 2, 3]).json()
    for own in ("", "x" * 300):
        reply = _infer(client, [1, 2, 3], id=own)
        assert reply.status_code == 200 and reply.json()["id"] == own


def test_the_log_keeps_the_fp32_values_the_model_was_given(producer: HeldProducer) -> None:
    log = PredictionLog(
        spec=SPEC, topic="p", producer=lambda: producer, max_records=10, timeout_s=0.5
    )
    log.start()
    try:
        client = _app(log)
        sent = [0.1, 1e-3, 2.5]  # FP64 on the wire: the model sees them rounded to FP32
        reply = _infer(client, sent, "FP64")
        assert reply.status_code == 200
        generated = reply.json()["id"]
        assert len(generated) == 32
        assert _infer(client, [1, 2, 3], id="").status_code == 400
        wait_for(lambda: len(producer.sent) == 1, "the logged row")
        key, value, _ = producer.sent[0]
        logged = decode_prediction(value)
        assert key == generated.encode() and logged.model_version == 3
        sample = decode_binary(SPEC, [logged.sample], np.zeros(1))
        assert sample.features[0].tobytes() == np.asarray(sent, np.float32).tobytes()
        assert list(logged.outputs) == reply.json()["outputs"][0]["data"]
    finally:
        producer.acknowledge()
        log.close()


def test_a_sparse_request_is_logged_row_by_row_with_its_ids(producer: HeldProducer) -> None:
    spec = SampleSpec(
        (2,),
        "binary",
        sparse=(SparseFeature("user", "users", 1), SparseFeature("items", "items", 3)),
    )
    params = {"rows": 50, "embedding_dim": 4}
    slot = WeightSlot(build_model("dlrm", spec, params))
    slot.load(dict(build_model("dlrm", spec, params).state_dict()), SnapshotHeader(4, "r"))
    log = PredictionLog(
        spec=spec, topic="p", producer=lambda: producer, max_records=10, timeout_s=0.5
    )
    client = TestClient(app_for(served_model(slot, spec, "ctr", prediction_log=log)))
    features = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    users, items = [[3], [9]], [[1, 2], []]

    def ids(name: str, rows: list[list[int]]) -> list[dict[str, object]]:
        flat = [i for row in rows for i in row]
        return [
            {"name": name, "shape": [len(flat)], "datatype": "INT64", "data": flat},
            {
                "name": f"{name}__lengths",
                "shape": [2],
                "datatype": "INT64",
                "data": [len(r) for r in rows],
            },
        ]

    dense = {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": features.tolist()}
    log.start()
    try:
        body = {"id": "ad-7", "inputs": [dense, *ids("user", users), *ids("items", items)]}
        reply = client.post("/v2/models/ctr/infer", json=body)
        assert reply.status_code == 200 and reply.json()["id"] == "ad-7"
        wait_for(lambda: len(producer.sent) == 2, "two logged rows")
        assert [key for key, _, _ in producer.sent] == [b"ad-7/0", b"ad-7/1"]
        samples = [decode_prediction(value).sample for _, value, _ in producer.sent]
        decoded = decode_binary(spec, samples, np.zeros(2))
        assert decoded.features.tobytes() == features.tobytes()
        assert decoded.sparse.features["user"].ids.tolist() == [3, 9]
        assert decoded.sparse.features["items"].lengths.tolist() == [2, 0]
        assert decoded.sparse.features["items"].ids.tolist() == [1, 2]
    finally:
        producer.acknowledge()
        log.close()
