"""The trainer's and join's ``/metrics`` server (``streamtrain.metrics.serve_metrics``, wsgiref
underneath) answers requests it cannot parse, and methods it does not serve, with a status
line and the JSON error body, and goes on serving.

Found by the audit with raw sockets at a trainer: http.server answered an HTML page to a bad
request line, a bad version, a line or header over 64 KiB and over 100 headers, and no status
line at all to a one-word request line; prometheus_client answered ``POST /metrics`` in text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from tests.metrics_scrape import Exporter, exported
from tests.serve_fixtures import raw_exchange

CASES = {
    "one-word request line": (b"GARBAGE\r\n\r\n", 400),
    "unknown HTTP version": (b"GET /metrics HTTP/9.9\r\nHost: t\r\n\r\n", 505),
    "malformed version": (b"GET /metrics HTTP/x\r\nHost: t\r\n\r\n", 400),
    "request line over 64 KiB": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    "header over 64 KiB": (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    "over 100 headers": (
        b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(150)) + b"\r\n",
        431,
    ),
    "quote in the request line": (b'GET /a"b c d e\r\n\r\n', 400),
    "POST /metrics": (b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nab", 405),
    "DELETE /metrics": (b"DELETE /metrics HTTP/1.1\r\nHost: t\r\n\r\n", 405),
}


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    Counter("audit_events", "Events.", registry=registry).inc()
    with exported(registry) as running:
        yield running


def _exchange(url: str, request: bytes) -> bytes:
    return raw_exchange(int(url.rsplit(":", 1)[1].split("/")[0]), request)


@pytest.mark.parametrize("case", list(CASES))
def test_an_unparsable_request_or_wrong_method_gets_a_json_error(
    exporter: Exporter, case: str
) -> None:
    request, status = CASES[case]
    answer = _exchange(exporter.url, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.0 {status} "), answer[:300]
    assert "content-type: application/json" in [line.lower() for line in lines], head
    assert b"\n" not in body.rstrip(b"\n"), body
    assert json.loads(body)["error"].startswith(str(status)), body
    assert exporter.value("audit_events_total") == 1.0  # still serving
