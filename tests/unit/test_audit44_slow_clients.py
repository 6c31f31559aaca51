"""Slow and silent HTTP clients are timed out, and the server answers others meanwhile.

Found by the second outside-in audit (raw sockets at a running worker): uvicorn times a
connection out only between requests, so a client that connected and sent nothing, sent its
head a line at a time (slowloris), or announced a body of 1000 bytes and sent 10 held its
connection for ever (the last two without any answer). Now: a silent new connection is closed
after the keep-alive timeout, a head must be whole within its deadline, a body must keep
arriving at a minimum rate; the last two are answered 408 with a JSON error line. The
deadlines are shortened here (class attributes) so the tests take seconds.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from streamtrain.serve.read_watch import ReadClock
from streamtrain.serve.server import ServingWorker
from tests.integration.process_output import await_condition
from tests.serve_fixtures import tiny_regression_worker

_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
).encode()


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServingWorker]:
    monkeypatch.setattr(ReadClock, "HEAD_TIMEOUT_S", 2.0)
    monkeypatch.setattr(ReadClock, "BODY_WINDOW_S", 2.0)
    monkeypatch.setattr(ReadClock, "BODY_MIN_BYTES", 1000)
    with tiny_regression_worker() as running:
        yield running


def _connect(worker: ServingWorker) -> socket.socket:
    return socket.create_connection(("127.0.0.1", worker.port), timeout=60)


def _answer(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    return answer


def _others_answered(worker: ServingWorker) -> None:
    request = urllib.request.Request(
        f"{worker.url}/v2/models/m/infer", data=_BODY, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
        assert json.loads(reply.read())["outputs"][0]["data"] == [3.5]


def _timed_out(answer: bytes, reason: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert reason in error, error
    assert "\n" not in error


def test_silent_connections_are_closed_and_others_answered(worker: ServingWorker) -> None:
    idle = [_connect(worker) for _ in range(200)]
    try:
        _others_answered(worker)  # 200 silent clients do not stop the server answering
        for conn in idle:
            conn.settimeout(0.0)

        def all_closed() -> bool:
            closed = 0
            for conn in idle:
                with contextlib.suppress(BlockingIOError):  # still open: nothing to read
                    closed += conn.recv(1) == b""  # closed without an answer: nothing asked
            return closed == len(idle)

        # uvicorn's keep-alive timeout (5 s) plus a tick; the wait only reports a hang
        await_condition(all_closed, "the 200 silent connections closed by the server", 60)
    finally:
        for conn in idle:
            conn.close()


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v2/repository/index"])
def test_a_head_sent_a_line_at_a_time_is_answered_408(worker: ServingWorker, path: str) -> None:
    with _connect(worker) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\n".encode())
        started = time.monotonic()
        try:
            for n in range(100):  # a header line every 0.2 s, never the blank line
                conn.sendall(b"X-Slow-%d: a\r\n" % n)
                time.sleep(0.2)  # the slow client's pace, not a wait on the server
        except OSError:  # the server closed the connection: its answer is read below
            pass
        assert time.monotonic() - started < 19, "the slow head was not timed out"
        _others_answered(worker)
        _timed_out(_answer(conn), "request line and headers not received whole")


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v2/repository/index"])
def test_a_body_announced_and_not_sent_is_answered_408(worker: ServingWorker, path: str) -> None:
    with _connect(worker) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n".encode())
        conn.sendall(b"0123456789")
        _others_answered(worker)
        _timed_out(_answer(conn), "request body arriving too slowly")


def test_a_body_sent_a_byte_at_a_time_is_answered_408(worker: ServingWorker) -> None:
    with _connect(worker) as conn:
        conn.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        try:
            for byte in _BODY.ljust(1000):  # a byte every 0.1 s: 20 per 2 s window, under 1000
                conn.sendall(bytes([byte]))
                time.sleep(0.1)  # the slow client's pace, not a wait on the server
        except OSError:
            pass
        _timed_out(_answer(conn), "request body arriving too slowly")


def test_a_slow_but_steady_body_is_read_and_answered(worker: ServingWorker) -> None:
    body = _BODY.ljust(20_000)  # JSON with trailing spaces: 20 pieces of 1000 bytes
    with _connect(worker) as conn:
        conn.sendall(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for at in range(0, len(body), 1000):  # 1000 bytes per 0.5 s: 4000 per window of 2 s
            conn.sendall(body[at : at + 1000])
            time.sleep(0.5)  # the client's pace, not a wait on the server
        answer = _answer(conn)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["outputs"][0]["data"] == [3.5]
