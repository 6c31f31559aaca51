"""Traffic split and shadow over gRPC, with tritonclient's gRPC client on a real server and the
real broker: a 50/50 split routes by the hash of Triton's request ``id`` exactly as REST does
(the same id always to the same arm), the response names the version that answered, and the
prediction log has each row under its arm; in shadow every answer is the live version's and
the candidate's rows are logged as ``shadow``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings
from streamtrain.wire.prediction_record import PredictionRecord, decode_prediction
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import ROW, logging_settings, prediction_log, publish, wait
from tests.version_fixtures import expected_value

TOKEN = "split-grpc-token-81f3"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUESTS = 80


def _bucket(request_id: str) -> float:
    """The routing hash as docs/serving.md states it, computed here on its own."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Served:
    def __init__(self, settings: Settings, url: str, client: Any) -> None:
        self.settings, self.url, self.client = settings, url, client

    def infer(self, request_id: str) -> tuple[str, float]:
        """The answering version and value of one gRPC request with ``request_id``."""
        tensor = grpcclient.InferInput("input", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([ROW], np.float32))
        try:
            result = self.client.infer("m", [tensor], request_id=request_id)
        except InferenceServerException:
            return "", float("nan")
        response = result.get_response()
        assert response.id == request_id
        return response.model_version, float(result.as_numpy("value").reshape(-1)[0])

    def split(self, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/v2/admin/split", json=body, headers=AUTH, timeout=REQUEST_S
        )
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def logged(self, ids: set[str], rows: int) -> list[PredictionRecord]:
        keep = lambda r: decode_prediction(r.value).request_id in ids  # noqa: E731
        return [decode_prediction(r.value) for r in prediction_log(self.settings, rows, keep)]


@pytest.fixture
def served(kafka_bootstrap: str, unique_name: str) -> Iterator[Served]:
    settings = logging_settings(
        kafka_bootstrap, unique_name, admin_token=TOKEN, retain_versions=2, grpc_port=0
    )
    worker = build_worker(settings)
    url = worker.start()
    assert worker.grpc is not None
    client = grpcclient.InferenceServerClient(worker.grpc.target)
    try:
        running = Served(settings, url, client)
        publish(settings, 5)
        wait(lambda: running.infer("warm-5")[0] == "5", "version 5 live over gRPC")
        publish(settings, 6)
        wait(lambda: running.infer("warm-6")[0] == "6", "version 6 live, 5 retained")
        yield running
    finally:
        client.close()
        worker.stop()


def test_a_grpc_split_routes_by_the_request_id_as_rest_does(served: Served) -> None:
    assert served.split({"candidate": "5", "share": 0.5, "mode": "split"})["candidate_version"] == 5
    ids = [f"g-split-{i}" for i in range(REQUESTS)]
    answered = {rid: served.infer(rid) for rid in ids}
    for rid, (version, value) in answered.items():
        want = 5 if _bucket(rid) < 0.5 else 6
        assert version == str(want), rid
        assert value == pytest.approx(expected_value(want, ROW), rel=1e-6)
    assert 0 < sum(v == "5" for v, _ in answered.values()) < REQUESTS
    retried = {rid: served.infer(rid)[0] for rid in ids[:20]}
    assert retried == {rid: answered[rid][0] for rid in ids[:20]}
    # REST routes the same id to the same arm
    for rid in ids[:10]:
        body = {
            "id": rid,
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}],
        }
        rest = httpx.post(f"{served.url}/v2/models/m/infer", json=body, timeout=REQUEST_S).json()
        assert rest["model_version"] == answered[rid][0], rid
    rows = {(r.request_id, r.arm, r.model_version) for r in served.logged(set(ids), REQUESTS + 30)}
    for rid, (version, _) in answered.items():
        assert (rid, "candidate" if version == "5" else "live", int(version)) in rows, rid


def test_grpc_shadow_answers_live_and_logs_the_candidate_as_shadow(served: Served) -> None:
    assert (
        served.split({"candidate": "5", "share": 0.5, "mode": "shadow"})["candidate_version"] == 5
    )
    ids = [f"g-shadow-{i}" for i in range(REQUESTS)]
    for rid in ids:
        version, value = served.infer(rid)
        assert version == "6", rid
        assert value == pytest.approx(expected_value(6, ROW), rel=1e-6)
    shadowed = {rid for rid in ids if _bucket(rid) < 0.5}
    assert 0 < len(shadowed) < REQUESTS
    mine = served.logged(set(ids), REQUESTS + len(shadowed))
    assert {r.request_id for r in mine if r.arm == "live"} == set(ids)
    shadows = [r for r in mine if r.arm == "shadow"]
    assert {r.request_id for r in shadows} == shadowed and len(shadows) == len(shadowed)
    assert all(r.model_version == 5 for r in shadows)
    assert all(r.outputs[0] == pytest.approx(expected_value(5, ROW), rel=1e-6) for r in shadows)
