"""Hostile infer requests answer 4xx with a message naming what is wrong, never 5xx; a client
that hangs up mid-body is counted as ``client_disconnected``, not as a server error."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from streamtrain.metrics import SERVER_REGISTRY
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.protocol.bodies import BINARY_HEADER
from streamtrain.serve.protocol.dataplane import ServedModel
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.serve_fixtures import app_for, running_worker, served_model

SPEC = SampleSpec((4,), "multiclass", num_classes=3)
INFER = "/v2/models/clf/infer"
DEEP = 100_000


def _served() -> ServedModel:
    slot = WeightSlot(torch.nn.Linear(4, 3))
    slot.load(dict(torch.nn.Linear(4, 3).state_dict()), SnapshotHeader(5, "r"))
    return served_model(slot, SPEC, "clf")


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(app_for(_served(), metrics_registry=SERVER_REGISTRY)) as test_client:
        yield test_client


def _tensor(data: str, datatype: str = "FP32", shape: str = "[1, 4]") -> bytes:
    return (
        f'{{"inputs": [{{"name": "input", "shape": {shape}, "datatype": "{datatype}", '
        f'"data": {data}}}]}}'
    ).encode()


HOSTILE = [
    (b"[" * DEEP + b"]" * DEEP, "Expected `object`, got `array`"),
    (b'{"inputs": [], "x": ' + b"[" * DEEP + b"]" * DEEP + b"}", "nested too deeply"),
    (b'{"id": ' + b"{" * DEEP + b"}" * DEEP + b"}", "not an OIP infer request"),
    (_tensor("[" * DEEP + "]" * DEEP), "nested too deeply"),
    (_tensor("[1" + "0" * 400 + ", 0, 0, 0]"), "Number out of range - at `$[0]`"),
    (_tensor("[0, 1" + "0" * 5000 + ", 0, 0]"), "Number out of range - at `$[1]`"),
    (_tensor("[0, 0, 1e400, 0]"), "Number out of range - at `$[2]`"),
    (_tensor('[0, 0, 0, "1"]'), "input 'input' holds a value FP32 cannot take: Expected `float`"),
    (_tensor("[[0, true, 0, 0]]"), "Expected `float`, got `bool` - at `$[0][1]`"),
    (_tensor("[0, 0, 300, 0]", "INT8"), "INT8 cannot take: Expected `int` <= 127 - at `$[2]`"),
    (_tensor("[0, -1, 0, 0]", "UINT8"), "Expected `int` >= 0 - at `$[1]`"),
    (_tensor("[0, 0, 0, 70000]", "FP16"), "Expected `float` <= 65504.0 - at `$[3]`"),
    (_tensor("[0, 0, 0, 1.5]", "INT32"), "Expected `int`, got `float` - at `$[3]`"),
    (_tensor("[0, 0, 0, 0]", shape="[1" + "0" * 30 + ", 4]"), "has 4 values but shape"),
    (_tensor("[0, 0, 0, 0]", shape="[-1, 4]"), "does not fit the model"),
    (b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32"}]}', "has no 'data'"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"", "not valid JSON"),
]


@pytest.mark.parametrize(("body", "message"), HOSTILE)
def test_hostile_bodies_answer_400(client: TestClient, body: bytes, message: str) -> None:
    reply = client.post(INFER, content=body)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]


def test_hostile_binary_headers_answer_400(client: TestClient) -> None:
    raw = np.array([[0, np.nan, 0, 0]], dtype=np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    cases = [
        (header + raw, str(len(header)), "non-finite number (NaN, Inf or out of FP32 range)"),
        (header + raw, "-3", f"{BINARY_HEADER} must be an integer"),
        (header + raw, "9" * 19, "but the body has only"),
        (header + raw, "9" * 40, f"{BINARY_HEADER} must be an integer"),  # bounded: 19 digits
        # Digits of other scripts (latin-1 on the wire, as servers read header bytes).
        (header + raw, "\u00b2", f"{BINARY_HEADER} must be an integer"),
        (header + raw, "1\u00b9", f"{BINARY_HEADER} must be an integer"),
        (header, str(len(header)), "binary input needs 16 bytes, the body carries 0"),
    ]
    for content, length, message in cases:
        value = length.encode("latin-1")
        reply = client.post(INFER, content=content, headers={BINARY_HEADER: value})
        assert reply.status_code == 400, reply.text
        assert message in reply.json()["error"]


def _outcome(client: TestClient, outcome: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'streamtrain_serve_requests_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no streamtrain_serve_requests_total series for {outcome}")


def test_hostile_bodies_count_as_bad_requests_not_errors(client: TestClient) -> None:
    before = _outcome(client, "bad_request"), _outcome(client, "error")
    for body, _ in HOSTILE:
        client.post(INFER, content=body)
    after = _outcome(client, "bad_request"), _outcome(client, "error")
    assert after[0] - before[0] == len(HOSTILE)
    assert after[1] == before[1]


def _scrape(url: str, outcome: str) -> float:
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f'streamtrain_serve_requests_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no streamtrain_serve_requests_total series for {outcome}")


def test_client_disconnect_mid_body_is_its_own_outcome() -> None:
    served = _served()
    app = app_for(served, metrics_registry=SERVER_REGISTRY)
    with running_worker(served, app) as worker:
        url = worker.url
        before = {o: _scrape(url, o) for o in ("client_disconnected", "error")}
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
            conn.sendall(
                f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n".encode()
                + b'{"inputs": [{"name": "input", '
            )
        deadline = time.monotonic() + 30
        while _scrape(url, "client_disconnected") == before["client_disconnected"]:
            assert time.monotonic() < deadline, "the hang-up was never counted"
            time.sleep(0.02)
        assert _scrape(url, "client_disconnected") == before["client_disconnected"] + 1
        assert _scrape(url, "error") == before["error"]
