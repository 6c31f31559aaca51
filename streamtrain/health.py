"""Process-wide health: is the loop alive, and is the process ready to do its job?

Two questions, answered the way Kubernetes probes ask them:

* **live**: the main loop beat (``beat()``) less than ``liveness_timeout_s`` ago. The loop beats
  on every iteration, idle polls included, so a loop stuck in a call turns liveness bad while
  other threads (the ``/metrics`` server) still answer.
* **ready**: live, and every named condition is ok (``set_condition("kafka", False, "...")``).
  Conditions are set by whoever knows: the trainer sets ``checkpoint`` once it restored or
  started a run; the Kafka wing sets ``kafka`` while the broker is unreachable; ingest sets
  ``samples`` while records arrive and none is valid (``ingest/reject_report.py``).

``routes()`` serves both as ``GET /health/live`` and ``GET /health/ready`` (200 or 503 with a
one-line JSON reason) next to ``/metrics`` (see ``metrics.serve_metrics``).

>>> now = [0.0]
>>> state = HealthState(liveness_timeout_s=5.0, clock=lambda: now[0])
>>> state.set_condition("checkpoint", False, "restoring")
>>> state.ready()
Verdict(ok=False, reason='checkpoint: restoring')
>>> state.set_condition("checkpoint", True, "restored step 40"); state.ready().ok
True
>>> now[0] = 6.0; state.live()
Verdict(ok=False, reason='loop last beat 6.0 s ago (limit 5.0 s)')
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from streamtrain.metrics import WSGIApp


class Verdict(NamedTuple):
    ok: bool
    reason: str


class HealthState:
    """Heartbeat and named readiness conditions, safe to use from any thread."""

    def __init__(
        self, liveness_timeout_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._timeout = liveness_timeout_s
        self._last_beat = clock()  # a process that has not looped yet gets one timeout to start
        self._conditions: dict[str, tuple[bool, str]] = {}

    def configure(self, liveness_timeout_s: float) -> None:
        if liveness_timeout_s <= 0:
            raise ValueError(f"liveness_timeout_s must be > 0, got {liveness_timeout_s}")
        with self._lock:
            self._timeout = liveness_timeout_s
            self._last_beat = self._clock()

    def beat(self) -> None:
        """The loop made progress (or polled and found nothing): it is not stuck."""
        self._last_beat = self._clock()  # a float store is atomic; no lock on the hot path

    def set_condition(self, name: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            self._conditions[name] = (ok, detail)

    def clear_condition(self, name: str) -> None:
        with self._lock:
            self._conditions.pop(name, None)

    def conditions(self) -> dict[str, tuple[bool, str]]:
        with self._lock:
            return dict(self._conditions)

    def live(self) -> Verdict:
        age = self._clock() - self._last_beat
        if age > self._timeout:
            return Verdict(False, f"loop last beat {age:.1f} s ago (limit {self._timeout:.1f} s)")
        return Verdict(True, f"loop beat {age:.1f} s ago")

    def ready(self) -> Verdict:
        alive = self.live()
        if not alive.ok:
            return alive
        failing = [
            f"{name}: {detail}" if detail else name
            for name, (ok, detail) in sorted(self.conditions().items())
            if not ok
        ]
        if failing:
            return Verdict(False, "; ".join(failing))
        return Verdict(True, "all conditions ok")


HEALTH = HealthState()
"""The process's health state; the trainer loop and the Kafka wing report into it."""


def beat() -> None:
    HEALTH.beat()


def set_condition(name: str, ok: bool, detail: str = "") -> None:
    HEALTH.set_condition(name, ok, detail)


def clear_condition(name: str) -> None:
    HEALTH.clear_condition(name)


def live() -> Verdict:
    return HEALTH.live()


def ready() -> Verdict:
    return HEALTH.ready()


def routes(state: HealthState = HEALTH) -> Mapping[str, WSGIApp]:
    """WSGI apps for ``/health/live`` and ``/health/ready``: 200 or 503, one JSON line."""
    return {"/health/live": _probe(state.live), "/health/ready": _probe(state.ready)}


def _probe(check: Callable[[], Verdict]) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            body = b'{"status":"error","reason":"use GET"}\n'
            start_response("405 Method Not Allowed", [*_headers(body), ("Allow", "GET, HEAD")])
            return [body]
        verdict = check()
        status = "ok" if verdict.ok else "fail"
        body = msgspec.json.encode({"status": status, "reason": verdict.reason}) + b"\n"
        start_response("200 OK" if verdict.ok else "503 Service Unavailable", _headers(body))
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


def _headers(body: bytes) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
