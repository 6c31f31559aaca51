"""Sparse ID inputs over OIP REST: ``tritonclient.http`` (binary and JSON tensors, INT64 and
BYTES IDs) against a real uvicorn server gets the model's own predictions; malformed sparse
inputs are 400s that say what is wrong."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.serve.protocol import grpc_tensors
from streamtrain.serve.protocol.bodies import ModelIO, ProtocolError
from streamtrain.serve.weights.inference import BatchingEngine, DirectEngine, head_for
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.train.models import build_model
from streamtrain.wire import hash_id
from tests.serve_fixtures import running_worker, served_model

SPEC = SampleSpec(
    (2,),
    "binary",
    sparse=(SparseFeature("user", "users", 1), SparseFeature("items", "items", 3)),
)
PARAMS = {"rows": 100, "embedding_dim": 4, "init_std": 0.5}
USERS = [[3], [9], [4]]
ITEMS = [[1, 2], [], [7, 8, 9]]


@pytest.fixture(params=["direct", "batching"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, torch.nn.Module]]:
    torch.manual_seed(0)
    model = build_model("dlrm", SPEC, PARAMS)
    model.eval()
    torch.manual_seed(1)
    slot = WeightSlot(build_model("dlrm", SPEC, PARAMS))
    slot.load(dict(model.state_dict()), SnapshotHeader(7, "r"))
    engine = (
        DirectEngine(slot, head_for(SPEC), torch.device("cpu"))
        if request.param == "direct"
        else BatchingEngine(slot, head_for(SPEC), torch.device("cpu"), 64, 0.002)
    )
    with running_worker(served_model(slot, SPEC, "ctr", engine=engine)) as worker:
        yield worker.url.removeprefix("http://"), model


def _expected(model: torch.nn.Module, x: np.ndarray, users: list[list[int]]) -> np.ndarray:
    sparse = {"user": JaggedTensor.from_lists(users), "items": JaggedTensor.from_lists(ITEMS)}
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(x), sparse)).numpy()


def _ids(name: str, rows: list[list[int]], binary: bool) -> list[object]:
    flat = np.array([i for r in rows for i in r], np.int64)
    ids = httpclient.InferInput(name, [len(flat)], "INT64")
    ids.set_data_from_numpy(flat, binary_data=binary)
    lengths = httpclient.InferInput(name + "__lengths", [len(rows)], "INT64")
    lengths.set_data_from_numpy(np.array([len(r) for r in rows], np.int64), binary_data=binary)
    return [ids, lengths]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_sends_ids_and_lengths(
    served: tuple[str, torch.nn.Module], binary: bool
) -> None:
    address, model = served
    client = httpclient.InferenceServerClient(address)
    try:
        x = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
        dense = httpclient.InferInput("input", [3, 2], "FP32")
        dense.set_data_from_numpy(x, binary_data=binary)
        inputs = [dense, *_ids("user", USERS, binary), *_ids("items", ITEMS, binary)]
        result = client.infer("ctr", inputs)
        got = result.as_numpy("probabilities")[:, 1]
        assert np.allclose(got, _expected(model, x, USERS), atol=1e-6)
        # String IDs (BYTES) are hashed as on the wire: the same prediction as their hash.
        names = np.array([b"alice", b"bob", b"carol"], dtype=np.object_)
        users = httpclient.InferInput("user", [3], "BYTES")
        users.set_data_from_numpy(names, binary_data=binary)
        lengths = httpclient.InferInput("user__lengths", [3], "INT64")
        lengths.set_data_from_numpy(np.ones(3, np.int64), binary_data=binary)
        result = client.infer("ctr", [dense, users, lengths, *_ids("items", ITEMS, binary)])
        hashed = [[hash_id(n.decode())] for n in names]
        got = result.as_numpy("probabilities")[:, 1]
        assert np.allclose(got, _expected(model, x, hashed), atol=1e-6)
        inputs_meta = client.get_model_metadata("ctr")["inputs"]
        assert [t["name"] for t in inputs_meta] == [
            "input",
            "user",
            "user__lengths",
            "items",
            "items__lengths",
        ]
    finally:
        client.close()


def _post(address: str, inputs: list[dict[str, object]]) -> tuple[int, str]:
    body = json.dumps({"inputs": inputs}).encode()
    request = urllib.request.Request(f"http://{address}/v2/models/ctr/infer", data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


DENSE = {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [0, 0, 0, 0]}


def _t(name: str, datatype: str, data: list[object]) -> dict[str, object]:
    return {"name": name, "shape": [len(data)], "datatype": datatype, "data": data}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([_t("items", "INT64", [1, 2])], "needs both inputs"),
        ([_t("items", "INT64", [1, 2]), _t("items__lengths", "INT64", [1, 2])], "adding up"),
        ([_t("items", "INT64", [1]), _t("items__lengths", "INT64", [1])], "2 counts"),
        ([_t("items", "INT64", [1] * 4), _t("items__lengths", "INT64", [4, 0])], "max_length 3"),
        ([_t("items", "FP32", [1.5]), _t("items__lengths", "INT64", [1, 0])], "use INT64"),
        ([_t("items", "INT64", [2**64]), _t("items__lengths", "INT64", [1, 0])], "does not fit"),
        ([_t("page", "INT64", [1])], "unknown input 'page'"),
        (
            [
                _t("items", "INT64", [1]),
                _t("items__lengths", "INT64", [1, 0]),
                _t("items__weights", "FP32", [-1.0]),
            ],
            "finite weights >= 0",
        ),
    ],
)
def test_malformed_sparse_inputs_are_400s_that_say_why(
    served: tuple[str, torch.nn.Module], inputs: list[dict[str, object]], message: str
) -> None:
    status, body = _post(served[0], [DENSE, *inputs])
    assert status == 400 and message in body, body


def test_a_feature_left_out_has_no_ids_and_weights_scale_them(
    served: tuple[str, torch.nn.Module],
) -> None:
    address, model = served
    status, body = _post(
        address,
        [
            DENSE,
            _t("items", "INT64", [5, 6]),
            _t("items__lengths", "INT64", [2, 0]),
            _t("items__weights", "FP32", [0.5, 3.0]),
        ],
    )
    assert status == 200, body
    probs = json.loads(body)["outputs"][0]["data"]
    sparse = {
        "user": JaggedTensor.from_lists([[], []]),
        "items": JaggedTensor.from_lists([[5, 6], []], weights=[[0.5, 3.0], []]),
    }
    with torch.no_grad():
        want = torch.sigmoid(model(torch.zeros(2, 2), sparse)).tolist()
    assert np.allclose(probs[1::2], want, atol=1e-6)


def test_grpc_refuses_a_sparse_model_pointing_to_rest() -> None:
    with pytest.raises(ProtocolError, match="served over the REST endpoint") as caught:
        grpc_tensors.parse_grpc_request(service_pb2.ModelInferRequest(), ModelIO.for_spec(SPEC))
    assert caught.value.status == 400  # INVALID_ARGUMENT over gRPC
