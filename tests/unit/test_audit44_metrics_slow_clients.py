"""The trainer's and join's /metrics server times out clients that stall while it reads a
request, and answers others meanwhile.

Found by the second outside-in audit: the server (a thread per connection) had no socket
timeout, so a client that connected and sent nothing, stalled mid-head, or sent its head a
byte at a time held its thread for ever. Now a head not whole within ``timeout`` seconds
(shortened here) gets a 408 with a JSON error line, without a traceback on stderr.
"""

from __future__ import annotations

import json
import socket
import time
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


def test_a_head_sent_a_byte_at_a_time_gets_408_within_the_deadline(port: int) -> None:
    """Each byte comes well within the socket timeout; the head as a whole does not."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\n")
        started = time.monotonic()
        try:
            for _ in range(60):  # a byte every 0.5 s for up to 30 s, never the blank line
                conn.sendall(b"x")
                time.sleep(0.5)  # the slow client's pace, not a wait on the server
        except OSError:  # the server closed the connection: its answer is read below
            pass
        assert time.monotonic() - started < 29, "the byte-at-a-time head was never timed out"
        _timed_out(conn)
