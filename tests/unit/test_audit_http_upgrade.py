"""A request that asks to upgrade the connection, an upgrade the server does not make, is
answered as the HTTP/1.1 request it also is, body included.

Found by the outside-in audit: ``curl --http2`` on an ``http://`` URL (and Java's
``RestClient``, Ktor) sends ``Connection: Upgrade, HTTP2-Settings`` and ``Upgrade: h2c``.
httptools ends such a request at its head and pauses; uvicorn logged "Unsupported upgrade
request." and dropped the rest of the bytes, so a valid infer request reached the app with an
empty body and got a 400 "request body is not valid JSON: Input data was truncated", and any
request pipelined behind it was lost. RFC 9110 (7.8) lets a server ignore an upgrade and
answer the request as if it had not been asked.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtrain.serve.server import ServingWorker
from tests.serve_fixtures import tiny_regression_worker

_PATH = b"/v2/models/m/infer"
_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
).encode()
H2C = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)
WEBSOCKET = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"


@pytest.fixture(scope="module")
def worker() -> Iterator[ServingWorker]:
    with tiny_regression_worker() as running:
        yield running


def _infer(upgrade: bytes, chunked: bool = False, close: bool = False) -> bytes:
    if chunked:
        half = len(_BODY) // 2
        parts = (_BODY[:half], _BODY[half:])
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        framing = b"Transfer-Encoding: chunked\r\n"
    else:
        body, framing = _BODY, b"Content-Length: %d\r\n" % len(_BODY)
    closing = b"Connection: close\r\n" if close else b""
    head = b"POST " + _PATH + b" HTTP/1.1\r\nHost: t\r\n" + upgrade + framing + closing
    return head + b"\r\n" + body


def _responses(conn: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` responses read off ``conn``: status and body each."""
    pending = b""
    answers: list[tuple[int, bytes]] = []
    while len(answers) < count:
        while b"\r\n\r\n" not in pending:
            chunk = conn.recv(65536)
            assert chunk, f"closed after {len(answers)} answers: {pending!r}"
            pending += chunk
        head, _, pending = pending.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers["content-length"])
        while len(pending) < length:
            chunk = conn.recv(65536)
            assert chunk, "closed mid-body"
            pending += chunk
        answers.append((int(lines[0].split()[1]), pending[:length]))
        pending = pending[length:]
    return answers


def _prediction(body: bytes) -> float:
    return float(json.loads(body)["outputs"][0]["data"][0])


@pytest.mark.parametrize("upgrade", [H2C, WEBSOCKET], ids=["h2c", "websocket"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_ignored_upgrade_is_answered_with_its_body_and_the_next_request_too(
    worker: ServingWorker, upgrade: bytes, chunked: bool
) -> None:
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        # The upgrade request, then a plain one pipelined behind it, in one write.
        conn.sendall(_infer(upgrade, chunked) + _infer(b"", close=True))
        answers = _responses(conn, 2)
    assert [status for status, _ in answers] == [200, 200], answers
    assert [_prediction(body) for _, body in answers] == [3.5, 3.5]


def test_an_ignored_upgrade_whose_body_comes_in_pieces_is_read_whole(
    worker: ServingWorker,
) -> None:
    request = _infer(H2C)
    head_end = request.index(b"\r\n\r\n") + 4
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        conn.sendall(request[:head_end])
        for i in range(head_end, len(request), 7):
            conn.sendall(request[i : i + 7])
        ((status, body),) = _responses(conn, 1)
        assert status == 200 and _prediction(body) == 3.5
        # The connection stays usable: an upgrade GET without a body, then a plain request.
        conn.sendall(
            b"GET /v2/models/m HTTP/1.1\r\nHost: t\r\n" + H2C + b"\r\n" + _infer(b"", close=True)
        )
        (meta, infer) = _responses(conn, 2)
    assert meta[0] == 200 and json.loads(meta[1])["name"] == "m"
    assert infer[0] == 200 and _prediction(infer[1]) == 3.5


_REQUESTS = st.tuples(
    st.sampled_from([b"", H2C, WEBSOCKET]),
    st.sampled_from(["infer", "infer-chunked", "metadata"]),
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    requests=st.lists(_REQUESTS, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=6),
)
def test_pipelined_mixes_of_upgrade_and_plain_requests_in_any_pieces_are_all_answered(
    worker: ServingWorker, requests: list[tuple[bytes, str]], cuts: list[int]
) -> None:
    """Property: whatever mix of ignored upgrades and plain requests arrives pipelined on one
    connection, cut into whatever pieces, each gets its own 200 in order."""
    wire = b""
    for i, (upgrade, kind) in enumerate(requests):
        close = i == len(requests) - 1
        if kind == "metadata":
            closing = b"Connection: close\r\n" if close else b""
            wire += b"GET /v2/models/m HTTP/1.1\r\nHost: t\r\n" + upgrade + closing + b"\r\n"
        else:
            wire += _infer(upgrade, chunked=kind == "infer-chunked", close=close)
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as conn:
        start = 0
        for cut in cuts:
            conn.sendall(wire[start : start + cut])
            start += cut
        conn.sendall(wire[start:])
        answers = _responses(conn, len(requests))
    assert [status for status, _ in answers] == [200] * len(requests)
    for (_, kind), (_, body) in zip(requests, answers, strict=True):
        if kind == "metadata":
            assert json.loads(body)["name"] == "m"
        else:
            assert _prediction(body) == 3.5
