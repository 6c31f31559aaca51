"""Servers start from their local cache: ready with valid weights while Kafka is unreachable,
caught up once it is back; without cache or Kafka, alive, not ready, retrying quietly."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from streamtrain.builders.server import build_worker
from streamtrain.kafka import create_topics
from streamtrain.snapshot.signing import ManifestSigner, generate_key_pair
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import (
    Forwarder,
    publish,
    ready,
    serve_settings,
    served_version,
    wait,
)

# Each attempt to reach the closed port takes the client library's metadata timeout (~10 s).
OUTAGE_WAIT_S = 150.0


def test_server_serves_its_cache_while_kafka_is_down_then_catches_up(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    create_topics(kafka_bootstrap, [unique_name])
    private, public, _ = generate_key_pair(tmp_path, "trainer")
    signer = ManifestSigner.from_file(private)
    cache = tmp_path / "cache"
    options = {"trusted_keys": [public], "cache_dir": cache}
    settings = serve_settings(kafka_bootstrap, unique_name, **options)

    first = build_worker(settings)
    url = first.start()
    try:
        publish(settings, 3, signer=signer)
        wait(lambda: served_version(url) == "3", "version 3 from Kafka")
        wait(lambda: len(list(cache.glob("v*"))) == 1, "version 3 in the cache")
    finally:
        first.stop()

    broker_down = Forwarder(kafka_bootstrap)  # refuses connections until opened
    down = serve_settings(broker_down.address, unique_name, **options)
    second = build_worker(down)
    url = second.start()
    try:
        wait(lambda: ready(url), "ready from the cache")
        assert served_version(url) == "3"
        publish(settings, 4, signer=signer)  # the trainer moves on; this server cannot see it
        wait(
            lambda: "cannot read snapshot topic" in caplog.text,
            "the outage to be noticed",
            OUTAGE_WAIT_S,
        )
        assert served_version(url) == "3"
        broker_down.open()
        wait(lambda: served_version(url) == "4", "catching up once Kafka is back", OUTAGE_WAIT_S)
        wait(lambda: len(list(cache.glob("v*"))) == 2, "version 4 cached too")
    finally:
        second.stop()
        broker_down.close()


def test_without_cache_or_kafka_the_server_is_alive_not_ready_and_quiet(
    kafka_bootstrap: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="streamtrain")
    nowhere = Forwarder(kafka_bootstrap)  # never opened
    settings = serve_settings(nowhere.address, unique_name)
    worker = build_worker(settings)
    url = worker.start()
    try:

        def attempts() -> int:
            return sum("still unreadable" in r.getMessage() for r in caplog.records) + 1

        wait(lambda: attempts() >= 3, "three connection attempts", OUTAGE_WAIT_S)
        assert httpx.get(f"{url}/v2/health/live", timeout=REQUEST_S).status_code == 200
        assert not ready(url) and served_version(url) is None
    finally:
        worker.stop()
        nowhere.close()
    # The serving side's own lines (the Kafka client wing logs its connection state itself).
    serving = ("streamtrain.serve", "streamtrain.snapshot")
    outage = [
        r for r in caplog.records if r.name.startswith(serving) and r.levelno >= logging.WARNING
    ]
    assert len(outage) == 1 and "not ready until a snapshot can be read" in outage[0].getMessage()
    assert outage[0].exc_info is None  # no traceback
