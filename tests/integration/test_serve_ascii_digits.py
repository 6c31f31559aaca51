"""Numbers written in other scripts, against a real server over the real broker: every path and
header position that carries a number answers 4xx (never 5xx) and the server keeps serving; a
snapshot record whose chunk header is ``²/3`` is rejected and counted
(``streamtrain_serve_rejected_snapshots_total{reason="bad_record"}``), never a topic-read
failure, and the next good snapshot still goes live."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from kafka import KafkaProducer

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings
from streamtrain.kafka import create_topics
from streamtrain.serve.protocol.bodies import BINARY_HEADER
from streamtrain.serve.server import ServingWorker
from streamtrain.snapshot import wire
from tests.integration.snapshot_harness import (
    publish,
    rejections,
    serve_settings,
    served_version,
    wait,
)

TOKEN = "digits-test-token-3c1a"
DIGITS = ["\u00b9", "\u00b2", "\u0663", "\uff13", "\U0001d7d1", "5\u00b2", "\u0665"]
BODY = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,1,1,1]}]}'
VERSION_PATHS = [
    ("POST", "/v2/models/m/versions/{}/infer"),
    ("GET", "/v2/models/m/versions/{}"),
    ("GET", "/v2/models/m/versions/{}/ready"),
    ("GET", "/v2/models/m/versions/{}/config"),
    ("GET", "/v2/models/m/versions/{}/stats"),
    ("POST", "/v2/models/{}/infer"),  # a model name made of digits
    ("GET", "/v2/models/{}/ready"),
]


@pytest.fixture
def settings(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> Settings:
    create_topics(kafka_bootstrap, [unique_name])
    return serve_settings(
        kafka_bootstrap, unique_name, admin_token=TOKEN, retain_versions=2, cache_dir=str(tmp_path)
    )


@pytest.fixture
def worker(settings: Settings) -> Iterator[ServingWorker]:
    serving = build_worker(settings)
    serving.start()
    try:
        yield serving
    finally:
        serving.stop()


def _request(
    url: str, method: str, path: str, body: bytes | None, headers: dict[str, bytes]
) -> int:
    """One raw request: http.client sends header bytes as given (httpx would refuse some)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body is not None and "content-length" not in headers:
            connection.putheader("content-length", str(len(body)))
        connection.endheaders(body)
        return connection.getresponse().status
    finally:
        connection.close()


def _infer_version(url: str) -> int:
    return _request(url, "POST", "/v2/models/m/infer", BODY, {})


def test_non_ascii_digits_in_every_position_answer_4xx(
    worker: ServingWorker, settings: Settings
) -> None:
    url = worker.url
    # 3 live before 4 is published: read in one poll (or at start) 3 would be superseded, not
    # retained, and the retained-version check at the end would have nothing to ask for.
    publish(settings, 3)
    wait(lambda: served_version(url) == "3", "version 3 live")
    publish(settings, 4)
    wait(lambda: served_version(url) == "4", "version 4 live")
    statuses: dict[str, int] = {}
    for digit in DIGITS:
        for method, template in VERSION_PATHS:
            path = template.format(quote(digit))
            statuses[f"{method} {path}"] = _request(
                url, method, path, BODY if method == "POST" else None, {}
            )
        latin = digit.encode("utf-8")  # what a client puts on the wire; servers read latin-1
        infer = "/v2/models/m/infer"
        statuses[f"{BINARY_HEADER}: {digit}"] = _request(
            url, "POST", infer, BODY, {BINARY_HEADER: latin}
        )
        statuses[f"content-length: {digit}"] = _request(
            url, "POST", infer, BODY, {"content-length": latin}
        )
        pin = f'{{"version": "{digit}"}}'.encode()
        statuses[f"pin {digit}"] = _request(
            url,
            "POST",
            "/v2/admin/pin",
            pin,
            {"authorization": f"Bearer {TOKEN}".encode(), "content-type": b"application/json"},
        )
    for superscript in ("\u00b2", "\u00b3", "\u00b9"):  # latin-1 digits that reach the app as is
        statuses[f"{BINARY_HEADER}: {superscript} (latin-1)"] = _request(
            url, "POST", "/v2/models/m/infer", BODY, {BINARY_HEADER: superscript.encode("latin-1")}
        )
    server_errors = {what: status for what, status in statuses.items() if status >= 500}
    assert not server_errors
    assert {status for status in statuses.values()} <= {400, 404, 413}
    # A retained version named in ASCII still answers, so the 404s above were about the digits.
    assert _request(url, "POST", "/v2/models/m/versions/3/infer", BODY, {}) == 200
    assert _infer_version(url) == 200


def test_a_malformed_chunk_header_is_rejected_and_counted(
    worker: ServingWorker, settings: Settings
) -> None:
    url = worker.url
    publish(settings, 3)
    wait(lambda: _infer_version(url) == 200, "version 3 live")
    before = rejections(url).get("bad_record", 0.0)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    try:
        for chunk in ("\u00b2/3", "0/\u0663", "\uff10/1"):
            headers = [
                (wire.KIND, b"chunk"),
                (wire.SNAPSHOT, b"run-a/9"),
                (wire.CHUNK, chunk.encode()),
                (wire.MODEL, b"linear"),
            ]
            producer.send(settings.topics.snapshots, value=b"x", headers=headers, partition=0).get(
                timeout=30
            )
    finally:
        producer.close(5)
    wait(lambda: rejections(url).get("bad_record", 0.0) >= before + 3, "3 bad_record rejections")
    assert _infer_version(url) == 200  # still serving version 3
    publish(settings, 4)  # the tail went on past the bad records: no backoff, no stall
    wait(lambda: b'"model_version":"4"' in _body(url), "version 4 live after the malformed records")


def _body(url: str) -> bytes:
    host, _, port = url.removeprefix("http://").rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", "/v2/models/m/infer", BODY)
        return connection.getresponse().read()
    finally:
        connection.close()
