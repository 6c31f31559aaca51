"""Health state and its HTTP probes, served next to /metrics on one real port."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from streamtrain.health import HealthState, routes
from streamtrain.metrics import serve_metrics


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_liveness_follows_the_heartbeat() -> None:
    clock = _Clock()
    state = HealthState(liveness_timeout_s=5.0, clock=clock)
    assert state.live().ok, "a process gets one timeout to start beating"
    clock.now += 4.9
    assert state.live().ok
    clock.now += 0.2
    verdict = state.live()
    assert not verdict.ok and "5.1 s ago" in verdict.reason
    state.beat()
    assert state.live().ok


def test_readiness_needs_every_condition_and_a_live_loop() -> None:
    clock = _Clock()
    state = HealthState(liveness_timeout_s=5.0, clock=clock)
    assert state.ready().ok, "no condition registered: nothing blocks readiness"
    state.set_condition("kafka", False, "broker unreachable for 12 s")
    state.set_condition("checkpoint", False, "restoring")
    verdict = state.ready()
    assert not verdict.ok
    assert verdict.reason == "checkpoint: restoring; kafka: broker unreachable for 12 s"
    state.set_condition("checkpoint", True, "resumed at step 40")
    assert state.ready().reason == "kafka: broker unreachable for 12 s"
    state.clear_condition("kafka")
    assert state.ready().ok
    clock.now += 10
    assert not state.ready().ok, "a stuck loop is not ready either"


def test_configure_rejects_a_nonpositive_timeout() -> None:
    with pytest.raises(ValueError, match="liveness_timeout_s must be > 0"):
        HealthState().configure(0)


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    Counter("demo_events", "Events.", ["kind"], registry=registry).labels("a").inc(3)
    Gauge("demo_level", "Level.", registry=registry).set(1.5)
    return registry


def test_probes_answer_beside_metrics_and_metrics_stay_byte_identical() -> None:
    registry = _registry()
    clock = _Clock()
    state = HealthState(liveness_timeout_s=5.0, clock=clock)
    ours = serve_metrics(registry, 0, host="127.0.0.1", routes=routes(state))
    theirs, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    base = f"http://127.0.0.1:{ours.server_port}"
    try:
        for path in ("/metrics", "/", "/metrics?name[]=demo_level"):
            mine = httpx.get(base + path)
            reference = httpx.get(f"http://127.0.0.1:{theirs.server_port}{path}")
            assert mine.status_code == reference.status_code == 200
            assert mine.content == reference.content and b"demo_level 1.5" in mine.content
            assert mine.headers["content-type"] == reference.headers["content-type"]

        live = httpx.get(base + "/health/live")
        assert live.status_code == 200 and live.json()["status"] == "ok"
        state.set_condition("kafka", False, "broker unreachable")
        ready = httpx.get(base + "/health/ready")
        assert ready.status_code == 503
        assert ready.content.count(b"\n") == 1, "one line"
        assert json.loads(ready.content) == {
            "status": "fail",
            "reason": "kafka: broker unreachable",
        }
        clock.now += 6
        assert httpx.get(base + "/health/live").status_code == 503
        assert httpx.get(base + "/metrics").status_code == 200, "metrics answer while unlive"
        assert httpx.post(base + "/health/live").status_code == 405
    finally:
        ours.shutdown()
        theirs.shutdown()


def test_a_stuck_loop_turns_liveness_bad_while_metrics_still_answer() -> None:
    """A thread that stops beating (blocked in a call) is seen through the real endpoint."""
    state = HealthState(liveness_timeout_s=0.3)
    server = serve_metrics(_registry(), 0, host="127.0.0.1", routes=routes(state))
    stuck, stop = threading.Event(), threading.Event()

    def loop() -> None:
        while not stop.is_set():
            state.beat()
            if stuck.is_set():
                stop.wait()  # blocked: no more beats
            stop.wait(0.01)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert httpx.get(url + "/health/live").status_code == 200
        stuck.set()
        answers = _poll_until(url + "/health/live", 503, timeout=30)
        assert "ago (limit 0.3 s)" in answers.json()["reason"]
        assert httpx.get(url + "/metrics").status_code == 200
    finally:
        stop.set()
        worker.join(5)
        server.shutdown()


def _poll_until(url: str, status: int, timeout: float) -> httpx.Response:
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while True:
            response = httpx.get(url)
            if response.status_code == status:
                return response
            assert not done.is_set(), f"{url} never answered {status} within {timeout} s"
            done.wait(0.05)
    finally:
        deadline.cancel()
