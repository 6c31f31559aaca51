"""The trainer's and join's /metrics server times out clients that stall while it reads a
request, and answers others meanwhile.

Found by the second outside-in audit: the server (a thread per connection) had no socket
timeout, so a client that connected and sent nothing, or stalled mid-head, held its thread
for ever. Now such a client gets a 408 with a JSON error line after ``timeout`` seconds of
silence (shortened here), without a traceback on stderr.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from streamtrain.metrics.http import _QuietHandler, serve_metrics


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(_QuietHandler, "timeout", 5.0)
    registry = CollectorRegistry()
    Counter("audit44_scrapes", "A counter to find in the scrape.", registry=registry)
    server = serve_metrics(registry, 0, "127.0.0.1")
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()
        server.server_close()


def _timed_out(conn: socket.socket) -> None:
    conn.settimeout(30)
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 408 "), answer[:200]
    assert "request not received within 5 s" in json.loads(body)["error"]


def test_silent_and_stalled_clients_get_408_and_others_are_answered(
    port: int, capfd: pytest.CaptureFixture[str]
) -> None:
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")  # never the blank line
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert b"audit44_scrapes_total 0.0" in reply.read()
        # answered while the stalled client is still held (not after its time-out)
        stalled.settimeout(0.0)
        with pytest.raises(BlockingIOError):
            stalled.recv(1)
        _timed_out(stalled)
        for conn in silent:
            _timed_out(conn)
    finally:
        stalled.close()
        for conn in silent:
            conn.close()
    assert "Traceback" not in capfd.readouterr().err
