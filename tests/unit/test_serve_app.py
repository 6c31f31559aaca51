"""The OIP HTTP API against the ASGI app: every route, every error with its message."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient
from torch import nn

from streamtrain.metrics import SERVER_REGISTRY
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.protocol.bodies import BINARY_HEADER
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.serve_fixtures import app_for, served_model

SPEC = SampleSpec((2, 3), "multiclass", num_classes=3)
INFER = "/v2/models/clf/infer"


def _weights(model: nn.Module, version: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(version)
    return {k: torch.randn_like(v) for k, v in model.state_dict().items()}


@pytest.fixture
def setup() -> Iterator[tuple[TestClient, WeightSlot, nn.Module]]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    slot = WeightSlot(model)
    app = app_for(
        served_model(slot, SPEC, "clf"), max_body_bytes=2048, metrics_registry=SERVER_REGISTRY
    )
    with TestClient(app) as client:
        yield client, slot, nn.Sequential(nn.Flatten(), nn.Linear(6, 3))


def _body(rows: int = 2, **extra: object) -> dict[str, object]:
    data = np.arange(rows * 6, dtype=np.float32).reshape(rows, 2, 3) / 10
    tensor = {"name": "input", "shape": [rows, 2, 3], "datatype": "FP32", "data": data.tolist()}
    return {"inputs": [tensor], **extra}


def _ready(client: TestClient, slot: WeightSlot, ref: nn.Module, version: int = 7) -> None:
    tensors = _weights(ref, version)
    ref.load_state_dict(tensors)
    slot.load(tensors, SnapshotHeader(version, "run"))


def test_not_ready_before_first_snapshot(setup: tuple[TestClient, WeightSlot, nn.Module]) -> None:
    client, _, _ = setup
    assert client.get("/v2/health/live").status_code == 200
    for path in ("/v2/health/ready", "/v2/models/clf/ready", "/v2/models/clf"):
        reply = client.get(path)
        assert reply.status_code == 503
        assert "first valid weight snapshot" in reply.json()["error"]
    reply = client.post(INFER, json=_body())
    assert reply.status_code == 503 and "not ready" in reply.json()["error"]


def test_metadata_and_readiness(setup: tuple[TestClient, WeightSlot, nn.Module]) -> None:
    client, slot, ref = setup
    _ready(client, slot, ref, version=7)
    server = client.get("/v2").json()
    assert server["name"] == "streamtrain" and "binary_tensor_data" in server["extensions"]
    assert isinstance(server["version"], str)
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/clf").json()
    assert meta == {
        "name": "clf",
        "versions": ["7"],
        "platform": "pytorch",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2, 3]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "predicted_class", "datatype": "INT64", "shape": [-1]},
        ],
    }
    assert client.get("/v2/models/clf/versions/7").json() == meta
    assert client.get("/v2/models/clf/ready").status_code == 200
    assert client.get("/v2/models/clf/versions/7/ready").status_code == 200
    for path in ("/v2/models/clf/versions/6/ready", "/v2/models/clf/versions/6"):
        reply = client.get(path)
        assert reply.status_code == 404
        assert "version '6' is not loaded; the live version is 7" in reply.json()["error"]
    reply = client.get("/v2/models/other")
    assert reply.status_code == 404 and "unknown model 'other'" in reply.json()["error"]
    reply = client.get("/v2/nowhere")
    assert reply.status_code == 404 and reply.json() == {"error": "no route /v2/nowhere"}
    reply = client.get(INFER)
    assert reply.status_code == 405
    assert reply.json() == {"error": f"Method Not Allowed for GET {INFER}"}


def test_infer_matches_offline_model(setup: tuple[TestClient, WeightSlot, nn.Module]) -> None:
    client, slot, ref = setup
    _ready(client, slot, ref, version=7)
    reply = client.post(INFER, json=_body(rows=2, id="req-1"))
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert doc["model_name"] == "clf" and doc["model_version"] == "7" and doc["id"] == "req-1"
    features = torch.arange(12, dtype=torch.float32).reshape(2, 2, 3) / 10
    probs = torch.softmax(ref(features), dim=1)
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["probabilities"]["shape"] == [2, 3]
    assert out["probabilities"]["datatype"] == "FP32"
    assert np.allclose(out["probabilities"]["data"], probs.reshape(-1).tolist(), atol=1e-6)
    assert out["predicted_class"] == {
        "name": "predicted_class",
        "shape": [2],
        "datatype": "INT64",
        "data": probs.argmax(dim=1).tolist(),
    }
    # flat data, another numeric datatype, a requested subset and the version route
    flat = _input(datatype="FP64", shape=[2, 2, 3], data=(np.arange(12) / 10).tolist())
    flat["outputs"] = [{"name": "predicted_class"}]
    doc = client.post("/v2/models/clf/versions/7/infer", json=flat).json()
    assert [o["name"] for o in doc["outputs"]] == ["predicted_class"]
    assert doc["outputs"][0]["data"] == probs.argmax(dim=1).tolist()
    reply = client.post("/v2/models/clf/versions/3/infer", json=_body())
    assert reply.status_code == 404 and "live version is 7" in reply.json()["error"]


def test_binary_tensor_extension(setup: tuple[TestClient, WeightSlot, nn.Module]) -> None:
    client, slot, ref = setup
    _ready(client, slot, ref)
    features = np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 2, 3)
    raw = features.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    reply = client.post(INFER, content=header + raw, headers={BINARY_HEADER: str(len(header))})
    assert reply.status_code == 200, reply.text
    json_len = int(reply.headers[BINARY_HEADER])
    doc = json.loads(reply.content[:json_len])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert sizes == [12, 8]
    probs = np.frombuffer(reply.content[json_len : json_len + 12], dtype="<f4")
    expected = torch.softmax(ref(torch.from_numpy(features)), dim=1)[0].detach().numpy()
    assert np.allclose(probs, expected, atol=1e-6)
    assert np.frombuffer(reply.content[json_len + 12 :], dtype="<i8")[0] == expected.argmax()


def _input(**changes: object) -> dict[str, object]:
    tensor: dict[str, object] = {
        "name": "input",
        "shape": [1, 2, 3],
        "datatype": "FP32",
        "data": [0.0] * 6,
    }
    tensor.update(changes)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not an OIP infer request: Expected `object`, got `array`"),
        (b'{"inputs": [{"name": "input"}]}', "missing required field `shape`"),
        (b'{"inputs": []}', "'inputs' must be a non-empty list"),
        (_input(shape=[1, 6]), "input shape [1, 6] does not fit the model: expected [n, 2, 3]"),
        (_input(shape=[0, 2, 3], data=[]), "with n >= 1 rows"),
        (_input(datatype="BYTES"), "input datatype 'BYTES' is not supported; use FP32"),
        (_input(name="x"), "unknown input 'x'; this model takes one input named 'input'"),
        (_input(data=[0.0] * 5), "'data' has 5 values but shape [1, 2, 3] needs 6"),
        (_input(data=["a"] * 6), "Expected `float`, got `str` - at `$[0]`"),
        (_input(data=[1e39] * 6), "FP32 cannot take: Expected `float` <= 3.4028234663852886e+38"),
        (_input(data=[[0.0] * 3, [0.0] * 2]), "nested lists of unequal lengths"),
        (_input(data=[[[[0.0]]]]), "nested 4 lists deep but the tensor has rank 3"),
        (_input(data=None), "'data' must be a list of numbers"),
        (_input(data=[0.0] * 6, datatype="INT8"), "Expected `int`, got `float` - at `$[0]`"),
        ({**_input(), "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
    ],
)
def test_bad_requests_say_what_is_wrong(
    setup: tuple[TestClient, WeightSlot, nn.Module], body: object, message: str
) -> None:
    client, slot, ref = setup
    _ready(client, slot, ref)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = client.post(INFER, content=content)
    assert reply.status_code == 400
    assert message in reply.json()["error"]


def test_nan_in_json_is_rejected(setup: tuple[TestClient, WeightSlot, nn.Module]) -> None:
    client, slot, ref = setup
    _ready(client, slot, ref)
    content = json.dumps(_input()).replace("0.0", "NaN", 1).encode()
    reply = client.post(INFER, content=content)
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]


def test_body_too_large(setup: tuple[TestClient, WeightSlot, nn.Module]) -> None:
    client, slot, ref = setup
    _ready(client, slot, ref)
    reply = client.post(INFER, json=_body(rows=100))
    assert reply.status_code == 413
    assert "exceeds max_body_bytes=2048" in reply.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b" " * 1000

    reply = client.post(INFER, content=chunks())
    assert reply.status_code == 413 and "too large" in reply.json()["error"]
    metrics = client.get("/metrics").text
    assert 'streamtrain_serve_requests_total{outcome="too_large"}' in metrics


def test_compressed_request_bodies(setup: tuple[TestClient, WeightSlot, nn.Module]) -> None:
    client, slot, ref = setup
    _ready(client, slot, ref)
    raw = json.dumps(_body(rows=1)).encode()
    for encoding, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        reply = client.post(INFER, content=packed, headers={"content-encoding": encoding})
        assert reply.status_code == 200, reply.text
    bomb = gzip.compress(b" " * 100_000)  # small on the wire, over the 2048-byte limit inflated
    reply = client.post(INFER, content=bomb, headers={"content-encoding": "gzip"})
    assert reply.status_code == 413 and "exceeds max_body_bytes" in reply.json()["error"]
    reply = client.post(INFER, content=raw, headers={"content-encoding": "br"})
    assert reply.status_code == 400 and "use gzip or deflate" in reply.json()["error"]
