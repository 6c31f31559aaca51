"""Servers start from their local cache: ready with valid weights while Kafka is unreachable,
caught up once it is back; without cache or Kafka, alive, not ready, retrying quietly."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from streamtrain.broker import create_topics
from streamtrain.config import Settings
from streamtrain.kafka_options import kafka_client_options
from streamtrain.serve.server import build_verifier, build_worker
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.signing import ManifestSigner, generate_key_pair
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from tests.integration.snapshot_harness import (
    Forwarder,
    publish,
    ready,
    serve_settings,
    served_version,
    wait,
)


def _quick_subscriber(settings: Settings) -> SnapshotSubscriber:
    """The production subscriber, giving up each bootstrap attempt sooner (test speed)."""
    return SnapshotSubscriber(
        client_options=kafka_client_options(settings.kafka),
        topic=settings.topics.snapshots,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
        verifier=build_verifier(settings.serve),
        bootstrap_timeout_ms=500,
    )


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
    second = build_worker(down, source=_quick_subscriber(down))
    url = second.start()
    try:
        wait(lambda: ready(url), "ready from the cache")
        assert served_version(url) == "3"
        publish(settings, 4, signer=signer)  # the trainer moves on; this server cannot see it
        wait(lambda: "cannot read snapshot topic" in caplog.text, "the outage to be noticed")
        assert served_version(url) == "3"
        broker_down.open()
        wait(lambda: served_version(url) == "4", "catching up once Kafka is back", 90.0)
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
    worker = build_worker(settings, source=_quick_subscriber(settings))
    url = worker.start()
    try:

        def attempts() -> int:
            return sum("still unreadable" in r.getMessage() for r in caplog.records) + 1

        wait(lambda: attempts() >= 3, "three connection attempts", 60.0)
        assert httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 200
        assert not ready(url) and served_version(url) is None
    finally:
        worker.stop()
        nowhere.close()
    loud = [
        r for r in caplog.records if r.name.startswith("streamtrain") and r.levelno >= logging.INFO
    ]
    outage = [r for r in loud if r.levelno >= logging.WARNING]
    assert len(outage) == 1 and "not ready until a snapshot can be read" in outage[0].getMessage()
    assert outage[0].exc_info is None  # no traceback
