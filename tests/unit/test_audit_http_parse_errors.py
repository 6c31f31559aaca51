"""Requests the HTTP parser refuses get the JSON error body of every other answer.

Found by the outside-in audit (raw sockets at a running ``streamtrain serve``): a request
whose head httptools cannot parse (an unknown method, a byte not allowed in the path or a
header value, a bad, negative, overflowing or repeated Content-Length, a bad chunk size,
Transfer-Encoding with Content-Length, HTTP/2's preface, a path over 64 KiB arriving in one
read) was answered by uvicorn's own ``400 text/plain`` "Invalid HTTP request received.",
which says neither that it is an error document nor what was wrong. Each must now be a 400
whose body is one JSON line naming the parser's finding, and the server must answer the next
connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from streamtrain.serve.server import ServingWorker
from tests.serve_fixtures import raw_exchange, tiny_regression_worker

_PATH = "/v2/models/m/infer"
_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
).encode()
_GOOD = f"POST {_PATH} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(_BODY)}\r\n\r\n".encode() + _BODY


def _post(extra: bytes, body: bytes = _BODY, method: bytes = b"POST", path: bytes = b"") -> bytes:
    target = path or _PATH.encode()
    return method + b" " + target + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n" + body


# (request, a fragment of the reason the answer must give)
MALFORMED = {
    "unknown method": (_post(b"", method=b"BREW"), "Invalid method"),
    "raw UTF-8 in the path": (_post(b"", path=b"/v2/models/\xc2\xb9/infer"), "url"),
    "control byte in a header": (_post(b"X-Request-Id: a\x01b\r\n"), "header value"),
    "header without a colon": (_post(b"garbage\r\n"), "header token"),
    "negative Content-Length": (_post(b"Content-Length: -5\r\n"), "Content-Length"),
    "superscript Content-Length": (_post(b"Content-Length: \xc2\xb9\r\n"), "Content-Length"),
    "overflowing Content-Length": (_post(b"Content-Length: " + b"9" * 30 + b"\r\n"), "overflow"),
    "two Content-Lengths": (_post(b"Content-Length: 5\r\nContent-Length: 7\r\n"), "Duplicate"),
    "bad chunk size": (_post(b"Transfer-Encoding: chunked\r\n", b"zz\r\n"), "chunk size"),
    "chunked with Content-Length": (
        _post(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        "Content-Length",
    ),
    "unknown Transfer-Encoding": (_post(b"Transfer-Encoding: gzip\r\n"), "Transfer-Encoding"),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/2"),
    "no request line": (b"GARBAGE\r\n\r\n", "Invalid method"),
    "path over 64 KiB in one read": (
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        "url is too long",
    ),
}


@pytest.fixture(scope="module")
def worker() -> Iterator[ServingWorker]:
    with tiny_regression_worker() as running:
        yield running


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_request_the_parser_refuses_gets_a_one_line_json_400(
    worker: ServingWorker, case: str
) -> None:
    request, reason = MALFORMED[case]
    answer = raw_exchange(worker.port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").lower().split("\r\n")
    assert lines[0] == "http/1.1 400 bad request", answer[:300]
    assert "content-type: application/json" in lines, head
    assert f"content-length: {len(body)}" in lines, head
    assert b"\n" not in body, body
    message = json.loads(body)["error"]
    assert message.startswith("malformed HTTP/1.1 request: "), message
    assert reason.lower() in message.lower(), message
    # The server is still serving.
    assert raw_exchange(worker.port, _GOOD.replace(b"Host: t", b"Host: t\r\nConnection: close"))[
        :15
    ] == (b"HTTP/1.1 200 OK")
