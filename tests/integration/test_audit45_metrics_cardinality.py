"""Audit 45, step 4: no label value on any /metrics comes from request input. A real server
(REST data plane, admin API with a token, repository API) and the trainer's and join's
/metrics exporters are fuzzed with random methods, paths, model names, versions, query
strings and headers; afterwards each scrape holds exactly the series it held before the
fuzz (only values move), none of the fuzz's tokens appears in it, and it still passes the
promtool rules (``tests/promlint.py``)."""

from __future__ import annotations

import random
import re
import urllib.parse

import httpx

from streamtrain.builders.server import build_worker
from streamtrain.kafka import create_topics
from streamtrain.metrics import JOIN_REGISTRY, TRAINER_REGISTRY
from tests.integration.snapshot_harness import publish, serve_settings, wait
from tests.metrics_scrape import exported
from tests.promlint import lint

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FUZZ")
TEMPLATES = (
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/config",
    "/v2/models/{name}/stats",
    "/v2/repository/models/{name}/load",
    "/v2/repository/models/{name}/unload",
    "/v2/repository/index",
    "/v2/admin/{name}",
    "/v2/admin/pin",
    "/v2/health/{name}",
    "/{name}",
    "/{name}/{version}/{name}",
    "/metrics/{name}",
    "/metrics?name={name}",
)


def _token(rng: random.Random) -> str:
    """A fuzz token recognisable in a scrape: ``fz`` and hex, with odd bytes around it."""
    core = f"fz{rng.getrandbits(40):010x}"
    return rng.choice(("", "%00", "%ff", "..", "é", " ", "%2F")) + core


def _fuzz(base: str, rng: random.Random, count: int) -> set[str]:
    tokens: set[str] = set()
    with httpx.Client(base_url=base, timeout=10) as client:
        for _ in range(count):
            name, version = _token(rng), rng.choice((_token(rng), "-1", "99999999999999999999"))
            tokens |= {name[-12:], version[-12:]}
            path = rng.choice(TEMPLATES).format(name=name, version=version)
            body = rng.choice((b"", b"{}", b'{"inputs": []}', rng.randbytes(64)))
            headers = {
                "Authorization": f"Bearer {_token(rng)}".encode(),  # bytes: é as UTF-8
                "X-Request-Id": _token(rng).encode(),
            }
            try:
                response = client.request(
                    rng.choice(METHODS), urllib.parse.quote(path, safe="/%?="), content=body,
                    headers=headers,
                )  # fmt: skip
            except httpx.HTTPError:
                continue  # a connection the server closed on a malformed request
            assert response.status_code < 500, (path, response.status_code, response.text[:300])
    return {t for t in tokens if t.startswith("fz")}


def _series(text: str) -> set[str]:
    return {line.rpartition(" ")[0] for line in text.splitlines() if line and line[0] != "#"}


def _check(base: str, metrics_url: str, seed: int, count: int) -> None:
    before = httpx.get(metrics_url, timeout=10).text
    tokens = _fuzz(base, random.Random(seed), count)
    after = httpx.get(metrics_url, timeout=10).text
    assert _series(after) == _series(before), _series(after) ^ _series(before)
    found = sorted({m for m in re.findall(r"fz[0-9a-f]{10}", after)} & tokens)
    assert not found, found
    assert lint(after) == []


def test_fuzzed_servers_add_no_series(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    settings = serve_settings(kafka_bootstrap, unique_name, admin_token="s3cret-token")
    worker = build_worker(settings)
    url = worker.start()
    try:
        publish(settings, 3)
        wait(lambda: worker.slot.info is not None and worker.slot.info.version == 3, "v3 live")
        # Every outcome once first, so that the fuzz only moves values.
        _fuzz(url, random.Random(1), 200)
        _check(url, f"{url}/metrics", seed=2, count=400)
    finally:
        worker.stop()
    for registry in (TRAINER_REGISTRY, JOIN_REGISTRY):
        with exported(registry) as exporter:
            base = exporter.url.removesuffix("/metrics")
            _fuzz(base, random.Random(3), 50)
            _check(base, exporter.url, seed=4, count=200)
