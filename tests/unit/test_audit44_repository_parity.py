"""REST and gRPC give the same answers on the model repository and on version paths, checked
with Triton's own clients (``tritonclient.http`` and ``tritonclient.grpc``).

Found by the second outside-in audit: a repository load or unload answered 404 "no route" over
REST, which reads as an unknown model, while gRPC answered ``UNIMPLEMENTED``. Both now say the
same one line: REST with a 400, gRPC with ``UNIMPLEMENTED`` (the server's snapshot topic, not a
request, decides what is loaded). Versions that are not the live one ("0", "-1", "01", a huge
number, non-ASCII) are a 404 / ``NOT_FOUND`` with the same message and ``ready: false``.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator

import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.protocol.grpc_service import GrpcServer
from streamtrain.serve.server import ServingWorker
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import NoSnapshots, SnapshotWatcher
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.serve_fixtures import app_for, served_model

Clients = tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient, int]


@pytest.fixture(scope="module")
def clients() -> Iterator[Clients]:
    slot = WeightSlot(torch.nn.Linear(2, 1))
    weights = {"weight": torch.tensor([[1.0, 1.0]]), "bias": torch.tensor([0.5])}
    slot.load(weights, SnapshotHeader(3, "r"))
    served = served_model(slot, SampleSpec((2,), "regression"), "m")
    grpc_server = GrpcServer(served, "127.0.0.1", 0, max_message_bytes=1 << 20)
    worker = ServingWorker(
        app=app_for(served),
        served=served,
        watcher=SnapshotWatcher(NoSnapshots(), slot),
        host="127.0.0.1",
        port=0,
        grpc=grpc_server,
    )
    worker.start()
    try:
        yield (
            httpclient.InferenceServerClient(f"127.0.0.1:{worker.port}"),
            grpcclient.InferenceServerClient(grpc_server.target),
            worker.port,
        )
    finally:
        worker.stop()


def _refusal(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as refused:
        call()  # type: ignore[operator]
    return refused.value


@pytest.mark.parametrize("model", ["m", "nosuch"])
@pytest.mark.parametrize("action", ["load", "unload"])
def test_load_and_unload_are_refused_alike(clients: Clients, model: str, action: str) -> None:
    rest, grpc, _ = clients
    over_rest = _refusal(lambda: getattr(rest, f"{action}_model")(model))
    over_grpc = _refusal(lambda: getattr(grpc, f"{action}_model")(model))
    assert over_rest.status() == "400"
    assert over_grpc.status() == "StatusCode.UNIMPLEMENTED"
    assert over_rest.message() == over_grpc.message()
    assert f"model {action} is not supported" in over_rest.message()
    assert f"'{model}'" in over_rest.message()
    assert "\n" not in over_rest.message()
    # the model is still served after a refused unload
    assert rest.is_model_ready("m") and grpc.is_model_ready("m")


def test_the_repository_index_is_the_same(clients: Clients) -> None:
    rest, grpc, _ = clients
    over_grpc = grpc.get_model_repository_index(as_json=True)["models"]
    assert rest.get_model_repository_index() == [{**m, "reason": ""} for m in over_grpc]
    assert over_grpc == [{"name": "m", "version": "3", "state": "READY"}]


@pytest.mark.parametrize("version", ["0", "-1", "01", "9" * 30, "2"])
def test_a_version_not_live_is_not_found_alike(clients: Clients, version: str) -> None:
    rest, grpc, _ = clients
    assert rest.is_model_ready("m", version) is False
    assert grpc.is_model_ready("m", version) is False
    for call in ("get_model_metadata", "get_model_config", "get_inference_statistics"):
        over_rest = _refusal(lambda: getattr(rest, call)("m", version))  # noqa: B023
        over_grpc = _refusal(lambda: getattr(grpc, call)("m", version))  # noqa: B023
        assert over_rest.status() == "404", call
        assert over_grpc.status() == "StatusCode.NOT_FOUND", call
        assert over_rest.message() == over_grpc.message()
        assert f"version '{version}' is not loaded" in over_rest.message()


@pytest.mark.parametrize("version", ["\u00e9", "\u0663", "\u00b2"])
def test_a_non_ascii_version_is_not_found_alike(clients: Clients, version: str) -> None:
    _, grpc, port = clients
    over_grpc = _refusal(lambda: grpc.get_model_metadata("m", version))
    assert over_grpc.status() == "StatusCode.NOT_FOUND"
    assert grpc.is_model_ready("m", version) is False
    # tritonclient.http sends the path unescaped (not valid HTTP); a client that escapes it:
    path = f"/v2/models/m/versions/{urllib.parse.quote(version)}"
    for suffix, status in (("", 404), ("/ready", 404), ("/config", 404)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path + suffix)
        reply = conn.getresponse()
        assert reply.status == status, (suffix, reply.status)
        error = json.loads(reply.read())["error"]
        conn.close()
        assert f"version '{version}' is not loaded" in error, error


_ODD_VERSIONS = [
    "0",
    "-1",
    "01",
    "+3",
    " 3",
    "3 ",
    "3.0",
    "1e3",
    "0x3",
    "9" * 400,
    "%00",
    "..",
    "\u0663",
    "\U0001f600",
    "3\u200b",
    "%ff",
    "a/b",
    "%2F",
]


def test_no_version_path_answers_5xx(clients: Clients) -> None:
    _, _, port = clients
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    ).encode()
    for version in _ODD_VERSIONS:
        base = f"/v2/models/m/versions/{urllib.parse.quote(version, safe='%')}"
        for method, suffix in (
            ("GET", ""),
            ("GET", "/ready"),
            ("GET", "/config"),
            ("GET", "/stats"),
            ("POST", "/infer"),
        ):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(method, base + suffix, body if method == "POST" else None)
            reply = conn.getresponse()
            answer = reply.read()
            conn.close()
            assert 400 <= reply.status < 500, (version, suffix, reply.status, answer[:200])
            assert "error" in json.loads(answer), (version, suffix, answer[:200])
