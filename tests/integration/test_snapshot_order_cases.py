"""Guarantee 3 on the real broker, the cases the other serving tests leave out: two runs
publishing the same version (the tie-break of docs/snapshots.md, "Which snapshot is newer"),
and a restarting server whose local cache is older, newer or partly corrupt against the topic
(it ends on the newest snapshot that passes every check, wherever that is)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings
from streamtrain.kafka import create_topics
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import (
    ROW,
    publish,
    rejections,
    serve_settings,
    served_version,
    wait,
)
from tests.threads import Workers
from tests.version_fixtures import expected_value

# The servers' snapshot reader follows the client library under test.
pytestmark = pytest.mark.kafka_client


def answer(url: str) -> tuple[str, float] | None:
    """(model_version, value) of one inference; None while not ready."""
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    response = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=REQUEST_S)
    if response.status_code == 503:
        return None
    response.raise_for_status()
    payload = response.json()
    return str(payload["model_version"]), float(payload["outputs"][0]["data"][0])


def weights_of(fill: int) -> float:
    """The value weights of version ``fill`` answer for ``ROW`` (what identifies them)."""
    return expected_value(fill, ROW)


def test_equal_versions_go_to_the_later_created_at_then_the_larger_run_id(
    kafka_bootstrap: str, unique_name: str
) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    settings = serve_settings(kafka_bootstrap, unique_name)
    t0 = time.time()
    running = build_worker(settings)
    url = running.start()
    late = None
    try:
        publish(settings, 5, run_id="run-b", created_at=t0, fill=50)
        wait(lambda: answer(url) == ("5", weights_of(50)), "run-b's version 5")
        publish(settings, 5, run_id="run-c", created_at=t0, fill=51)  # same time, larger run id
        wait(lambda: answer(url) == ("5", weights_of(51)), "run-c's version 5 (larger run id)")

        stale = rejections(url).get("stale", 0.0)
        publish(settings, 5, run_id="run-0", created_at=t0, fill=52)  # smaller run id
        publish(settings, 5, run_id="run-z", created_at=t0 - 1, fill=53)  # earlier, larger id
        wait(lambda: rejections(url).get("stale", 0.0) == stale + 2, "both refused as stale")
        assert answer(url) == ("5", weights_of(51))

        publish(settings, 5, run_id="run-a", created_at=t0 + 1, fill=54)  # later beats run id
        wait(lambda: answer(url) == ("5", weights_of(54)), "run-a's later version 5")

        # A server started now sees all five at once, in topic order, and picks the same one.
        late = build_worker(settings)
        late_url = late.start()
        wait(lambda: answer(late_url) is not None, "the late server ready")
        assert answer(late_url) == ("5", weights_of(54))
    finally:
        running.stop()
        if late is not None:
            late.stop()


class Observed:
    """Every version a server answered with, asked without pause from a thread (whose
    failure fails the test, ``tests/threads.py``)."""

    def __init__(self, url: str) -> None:
        self.versions: list[int] = []
        self._url = url
        self._stop = threading.Event()
        self._workers = Workers()
        self._workers.start(self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            version = served_version(self._url)
            if version is not None and (not self.versions or self.versions[-1] != int(version)):
                self.versions.append(int(version))

    def stop(self) -> None:
        self._stop.set()
        self._workers.join(30)


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, Observed]]:
    """A server for the block, and what it answered from its first ready moment on."""
    worker = build_worker(settings)
    url = worker.start()
    observed = Observed(url)
    try:
        yield url, observed
    finally:
        observed.stop()
        worker.stop()


def _entries(cache: Path) -> list[int]:
    return sorted(int(p.name[1:].split("-")[0]) for p in cache.glob("v*"))


def test_a_restarting_server_ends_on_the_newest_verified_of_cache_and_topic(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    topics = [f"{unique_name}-{i}" for i in range(3)]
    create_topics(kafka_bootstrap, topics)
    on = [serve_settings(kafka_bootstrap, t, cache_dir=cache, cache_keep=3) for t in topics]

    with serving(on[0]) as (url, observed):
        publish(on[0], 3)
        wait(lambda: served_version(url) == "3", "version 3")
        wait(lambda: _entries(cache) == [3], "version 3 cached")
    assert observed.versions == [3]

    # Cache older than the topic: the cache first, then the topic's newer version.
    publish(on[0], 7)
    with serving(on[0]) as (url, observed):
        wait(lambda: served_version(url) == "7", "the topic's version 7")
        wait(lambda: _entries(cache) == [3, 7], "version 7 cached")
    assert observed.versions in ([3, 7], [7])

    # Cache newer than the topic (a topic whose newest is 5): the cache's 7 stays live; the
    # topic's later 6 is refused as stale (proof the topic is read), its 9 is taken.
    publish(on[1], 5)
    with serving(on[1]) as (url, observed):
        wait(lambda: served_version(url) == "7", "the cached version 7")
        # the observer's thread has seen 7 too before the topic moves on (on a loaded machine
        # its first answers can come late)
        wait(lambda: observed.versions[-1:] == [7], "the observer on version 7")
        stale = rejections(url).get("stale", 0.0)
        publish(on[1], 6)
        wait(lambda: rejections(url).get("stale", 0.0) == stale + 1, "version 6 refused")
        assert served_version(url) == "7"
        publish(on[1], 9)
        wait(lambda: served_version(url) == "9", "version 9 from the topic")
        wait(lambda: _entries(cache) == [3, 7, 9], "version 9 cached")
        before = rejections(url)  # counters are the process's: the next server adds to them
    assert observed.versions == [7, 9]

    # The cache's newest entry damaged on disk: refused (counted on /metrics), the next cached
    # one serves until the topic's newest verified version (8, between them) is read.
    (payload,) = cache.glob("v00000000000000000009-*/payload.safetensors")
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0xFF
    payload.write_bytes(bytes(data))
    publish(on[2], 8)
    with serving(on[2]) as (url, observed):
        wait(lambda: served_version(url) == "8", "the topic's version 8")
        after = rejections(url)
    assert after["checksum"] == before["checksum"] + 1
    assert sum(after.values()) == sum(before.values()) + 1
    assert observed.versions in ([7, 8], [8])
