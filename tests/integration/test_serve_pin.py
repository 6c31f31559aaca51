"""Retained versions, pin, unpin, rollback and restart against a real server over the real broker,
driven through the admin API and the `streamtrain admin` CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from streamtrain.builders.server import build_worker
from streamtrain.cli import app
from streamtrain.config import Settings
from streamtrain.kafka import create_topics
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import ROW, publish, serve_settings, wait
from tests.version_fixtures import expected_value

TOKEN = "pin-test-token-8f1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _infer(url: str, version: str | None = None) -> tuple[int, str, float]:
    path = "/v2/models/m/infer" if version is None else f"/v2/models/m/versions/{version}/infer"
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    response = httpx.post(url + path, json=body, timeout=REQUEST_S)
    if response.status_code != 200:
        return response.status_code, "", 0.0
    doc = response.json()
    return 200, doc["model_version"], doc["outputs"][0]["data"][0]


def _state(url: str) -> dict[str, object]:
    response = httpx.get(f"{url}/v2/admin/versions", headers=AUTH, timeout=REQUEST_S)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _gauge(url: str, name: str) -> float:
    for line in httpx.get(
        f"{url}/metrics", timeout=REQUEST_S, follow_redirects=True
    ).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _admin(url: str, *args: str) -> str:
    result = CliRunner().invoke(
        app, ["admin", *args, "--url", url], env={"STREAMTRAIN_ADMIN_TOKEN": TOKEN}
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def settings(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> Settings:
    create_topics(kafka_bootstrap, [unique_name])
    return serve_settings(
        kafka_bootstrap,
        unique_name,
        cache_dir=str(tmp_path / "cache"),
        admin_token=TOKEN,
        retain_versions=2,
    )


def test_pin_unpin_rollback_and_restart(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="streamtrain")
    worker = build_worker(settings)
    url = worker.start()
    try:
        publish(settings, 5)
        wait(lambda: _infer(url)[1] == "5", "version 5 live")
        publish(settings, 6)
        wait(lambda: _infer(url)[1] == "6", "version 6 live")
        # Both retained versions answer by name, each with its own weights.
        assert _infer(url, "5") == (200, "5", pytest.approx(expected_value(5, ROW), rel=1e-6))
        assert _infer(url, "6")[1] == "6"
        assert _infer(url, "4")[0] == 404
        meta = httpx.get(f"{url}/v2/models/m", timeout=REQUEST_S).json()
        assert meta["versions"] == ["6", "5"]

        # Admin calls without the token, or with another one, are refused.
        assert httpx.post(f"{url}/v2/admin/pin", json={"version": 5}).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{url}/v2/admin/rollback", headers=wrong).status_code == 401
        assert _state(url)["pinned"] is None

        # Pin 5: new snapshots arrive and are retained, 5 keeps answering.
        assert "pinned 5" in _admin(url, "pin", "5")
        assert _infer(url)[1] == "5"
        assert _gauge(url, "streamtrain_serve_pinned_version") == 5
        publish(settings, 7)
        wait(lambda: "7" in _state(url)["retained"], "version 7 retained")  # type: ignore[operator]
        assert _infer(url)[1] == "5"
        assert _infer(url, "7")[1] == "7"
        refused = httpx.post(f"{url}/v2/admin/pin", json={"version": 3}, headers=AUTH)
        assert refused.status_code == 404 and "not retained" in refused.json()["error"]
    finally:
        worker.stop()

    # Restart: the pin was recorded beside the snapshot cache; 5 is live again.
    worker = build_worker(settings)
    url = worker.start()
    try:
        wait(lambda: _infer(url)[0] == 200, "ready after restart")
        assert _infer(url)[1] == "5"
        assert _state(url)["pinned"] == "5"
        assert _gauge(url, "streamtrain_serve_pinned_version") == 5

        # Unpin: the newest takes over.
        assert "pinned none" in _admin(url, "unpin")
        assert _infer(url)[1] == "7"
        assert _gauge(url, "streamtrain_serve_pinned_version") == 0
        publish(settings, 8)
        wait(lambda: _infer(url)[1] == "8", "version 8 live after unpin")

        # Rollback: the previous version answers, and stays pinned.
        assert "live 7  pinned 7" in _admin(url, "rollback")
        assert _infer(url) == (200, "7", pytest.approx(expected_value(7, ROW), rel=1e-6))
        assert "live 7" in _admin(url, "status")
    finally:
        worker.stop()
    assert TOKEN not in caplog.text  # the token is never logged


def test_admin_api_is_disabled_without_a_token(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    worker = build_worker(serve_settings(kafka_bootstrap, unique_name))
    url = worker.start()
    try:
        response = httpx.post(f"{url}/v2/admin/rollback", headers=AUTH, timeout=REQUEST_S)
        assert response.status_code == 403 and "admin_token" in response.json()["error"]
    finally:
        worker.stop()
