"""The Triton extensions' REST routes against the ASGI app: JSON-form classification, bad
``classification`` values, the repository index before and after the first snapshot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from starlette.testclient import TestClient
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.serve_fixtures import app_for, served_model

SPEC = SampleSpec((2,), "multiclass", num_classes=3)


@pytest.fixture
def setup() -> Iterator[tuple[TestClient, WeightSlot]]:
    slot = WeightSlot(nn.Linear(2, 3))
    app = app_for(served_model(slot, SPEC, "clf"), max_body_bytes=4096)
    with TestClient(app) as client:
        yield client, slot


def _body(classification: object) -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": classification}}],
    }


def test_classification_in_json_and_bad_counts(setup: tuple[TestClient, WeightSlot]) -> None:
    client, slot = setup
    # Class 2 scores highest, then 0, then 1: logits are weight rows summed plus bias.
    weight = torch.tensor([[1.0, 0.0], [0.0, -1.0], [2.0, 1.0]])
    slot.load({"weight": weight, "bias": torch.zeros(3)}, SnapshotHeader(4, "r"))
    response = client.post("/v2/models/clf/infer", json=_body(2))
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 2]
    assert [item.split(":")[1] for item in output["data"]] == ["2", "0"]
    probabilities = torch.softmax(weight.sum(dim=1), dim=0)
    assert float(output["data"][0].split(":")[0]) == pytest.approx(float(probabilities[2]), 1e-5)
    for bad in (0, -1, "2", True, 1 << 20):
        response = client.post("/v2/models/clf/infer", json=_body(bad))
        assert response.status_code == 400, bad
        assert "classification" in response.json()["error"], bad  # names the field


def test_repository_index_and_stats_before_and_after_weights(
    setup: tuple[TestClient, WeightSlot],
) -> None:
    client, slot = setup
    assert client.post("/v2/repository/index").json()[0]["state"] == "LOADING"
    assert client.post("/v2/repository/index", json={"ready": True}).json() == []
    assert client.get("/v2/models/stats").json() == {"model_stats": []}
    response = client.post("/v2/repository/index", content=b"[1")
    assert response.status_code == 400 and "ready" in response.json()["error"]
    slot.load({"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, SnapshotHeader(9, "r"))
    assert client.post("/v2/repository/index", json={"ready": True}).json() == [
        {"name": "clf", "version": "9", "state": "READY", "reason": ""}
    ]
    (entry,) = client.get("/v2/models/clf/versions/9/stats").json()["model_stats"]
    assert entry["inference_count"] == 0 and entry["version"] == "9"
    assert client.get("/v2/models/clf/versions/8/stats").status_code == 404
    assert client.get("/v2/models/other/config").status_code == 404
