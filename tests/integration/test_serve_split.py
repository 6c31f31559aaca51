"""Traffic split and shadow on a real server over the real broker: a 50/50 split routes by a
hash of the request id (the same id always to the same arm, both arms in proportion), admin
split changes need the token, the split shows in /v2/models/{name} and /metrics, and
prediction-log rows carry their arm; a shadow's answers are never returned and are logged
with the arm ``shadow``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from streamtrain.cli import app
from streamtrain.config import Settings
from streamtrain.wire.prediction_record import PredictionRecord, decode_prediction
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import (
    ROW,
    logging_settings,
    prediction_log,
    serving_5_then_6,
)
from tests.integration.trainer_harness import scrape
from tests.version_fixtures import expected_value

TOKEN = "split-test-token-2c7e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUESTS = 120


def _bucket(request_id: str) -> float:
    """The routing hash as docs/serving.md states it, computed here on its own."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@pytest.fixture
def settings(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> Settings:
    return logging_settings(kafka_bootstrap, unique_name, admin_token=TOKEN, retain_versions=2)


@pytest.fixture
def url(settings: Settings) -> Iterator[str]:
    with serving_5_then_6(settings, lambda served, rid: _infer(served, rid)[0]) as served:
        yield served


def _infer(url: str, request_id: str) -> tuple[str, float]:
    body = {
        "id": request_id,
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}],
    }
    response = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=REQUEST_S)
    if response.status_code != 200:
        return "", float("nan")
    doc = response.json()
    assert doc["id"] == request_id
    return doc["model_version"], doc["outputs"][0]["data"][0]


def _set_split(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = AUTH
) -> httpx.Response:
    return httpx.post(f"{url}/v2/admin/split", json=body, headers=headers, timeout=REQUEST_S)


def _logged(settings: Settings, ids: set[str], rows: int) -> list[PredictionRecord]:
    """The prediction log's records of ``ids``, once ``rows`` of them arrived."""
    found = prediction_log(settings, rows, lambda r: decode_prediction(r.value).request_id in ids)
    return [decode_prediction(r.value) for r in found]


def test_split_routes_by_request_id_hash_and_needs_the_token(settings: Settings, url: str) -> None:
    plan = {"candidate": "5", "share": 0.5, "mode": "split"}
    assert _set_split(url, plan, headers=None).status_code == 401
    assert _set_split(url, plan, {"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.delete(f"{url}/v2/admin/split", timeout=10).status_code == 401
    assert httpx.get(f"{url}/v2/admin/split", timeout=REQUEST_S).status_code == 401
    assert "traffic_split" not in httpx.get(f"{url}/v2/models/m", timeout=REQUEST_S).json()
    bad = _set_split(url, {"candidate": "5", "share": 1.5})
    assert bad.status_code == 400 and "share" in bad.json()["error"]

    state = _set_split(url, plan)
    assert state.status_code == 200, state.text
    assert state.json() == {"split": plan, "candidate_version": 5}
    assert (
        httpx.get(f"{url}/v2/models/m", timeout=REQUEST_S).json()["traffic_split"]["split"] == plan
    )

    ids = [f"split-{i}" for i in range(REQUESTS)]
    answered = {rid: _infer(url, rid) for rid in ids}
    for rid, (version, value) in answered.items():
        want = 5 if _bucket(rid) < 0.5 else 6
        assert version == str(want), rid
        assert value == pytest.approx(expected_value(want, ROW), rel=1e-6)
    # a retried request stays on its arm
    assert {rid: _infer(url, rid)[0] for rid in ids[:30]} == {
        rid: answered[rid][0] for rid in ids[:30]
    }
    candidate = sum(1 for version, _ in answered.values() if version == "5")
    assert 0.3 * REQUESTS < candidate < 0.7 * REQUESTS  # fixed ids: a fixed, balanced count

    found = scrape(f"{url}/metrics")
    assert found['streamtrain_serve_split_share_ratio{mode="split"}'] == 0.5
    assert found['streamtrain_serve_arm_requests_total{arm="candidate"}'] >= candidate + 1

    logged = _logged(settings, set(ids), REQUESTS + 30)
    rows = {(r.request_id, r.arm, r.model_version) for r in logged}
    for rid, (version, _) in answered.items():
        arm = "candidate" if version == "5" else "live"
        assert (rid, arm, int(version)) in rows, rid
    assert not any(r.arm == "shadow" for r in logged)

    ended = httpx.delete(f"{url}/v2/admin/split", headers=AUTH, timeout=10)
    assert ended.json() == {"split": None, "candidate_version": None}
    assert all(_infer(url, rid)[0] == "6" for rid in ids[:20])
    assert scrape(f"{url}/metrics")['streamtrain_serve_split_share_ratio{mode="split"}'] == 0.0


def test_shadow_answers_are_logged_with_their_arm_and_never_returned(
    settings: Settings, url: str
) -> None:
    state = _set_split(url, {"candidate": "newest", "share": 1.0, "mode": "shadow"})
    assert state.json()["candidate_version"] is None  # newest (6) is live: nothing to shadow
    state = _set_split(url, {"candidate": "5", "share": 0.5, "mode": "shadow"})
    assert state.json()["candidate_version"] == 5
    ids = [f"shadow-{i}" for i in range(REQUESTS)]
    for rid in ids:
        version, value = _infer(url, rid)
        assert version == "6"
        assert value == pytest.approx(expected_value(6, ROW), rel=1e-6)
    shadowed = {rid for rid in ids if _bucket(rid) < 0.5}
    assert 0 < len(shadowed) < REQUESTS
    mine = _logged(settings, set(ids), REQUESTS + len(shadowed))
    live = {r.request_id for r in mine if r.arm == "live"}
    assert live == set(ids) and all(r.model_version == 6 for r in mine if r.arm == "live")
    shadows = [r for r in mine if r.arm == "shadow"]
    assert {r.request_id for r in shadows} == shadowed and len(shadows) == len(shadowed)
    for r in shadows:
        assert r.model_version == 5
        assert r.outputs[0] == pytest.approx(expected_value(5, ROW), rel=1e-6)
    found = scrape(f"{url}/metrics")
    assert found['streamtrain_serve_arm_requests_total{arm="shadow"}'] >= len(shadowed)
    assert found['streamtrain_serve_split_share_ratio{mode="shadow"}'] == 0.5


def _cli(url: str, *args: str, token: str = TOKEN) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["admin", "split", *args, "--url", url], env={"STREAMTRAIN_ADMIN_TOKEN": token}
    )
    return result.exit_code, result.output.strip()


def test_the_admin_split_cli_shows_sets_and_clears_with_the_token(url: str) -> None:
    code, out = _cli(url, "set", "5", "--share", "0.5", token="wrong-token")
    assert code == 1 and out.startswith("error: HTTP 401") and "\n" not in out
    assert _cli(url, "show") == (0, "no split: every request is answered by the live version")
    assert _cli(url, "set", "5", "--share", "0.5") == (
        0,
        "split: candidate 5 (version 5), share 0.5",
    )
    state = httpx.get(f"{url}/v2/admin/split", headers=AUTH, timeout=REQUEST_S).json()
    assert state == {
        "split": {"candidate": "5", "share": 0.5, "mode": "split"},
        "candidate_version": 5,
    }
    rid = next(f"cli-{i}" for i in range(100) if _bucket(f"cli-{i}") < 0.5)
    assert _infer(url, rid)[0] == "5"
    for args, flag in (
        (("set", "5", "--share", "1.5"), "--share"),
        (("set", "five", "--share", "0.5"), "CANDIDATE"),
        (("set", "5", "--share", "0.5", "--mode", "canary"), "--mode"),
    ):
        code, out = _cli(url, *args)
        assert code == 2 and out.startswith("error: ") and flag in out and "\n" not in out
    assert _cli(url, "set", "newest", "--share", "0.2", "--mode", "shadow") == (
        0,
        "shadow: candidate newest (no version other than live: nothing routed), share 0.2",
    )
    assert _cli(url, "clear") == (0, "no split: every request is answered by the live version")
    assert (
        httpx.get(f"{url}/v2/admin/split", headers=AUTH, timeout=REQUEST_S).json()["split"] is None
    )
    code, out = _cli("http://127.0.0.1:9", "show")
    assert code == 1 and out.startswith("error: cannot reach the server") and "\n" not in out
