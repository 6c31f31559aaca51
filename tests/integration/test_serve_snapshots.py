"""A serving worker against the real broker: snapshots in, versions forward, rejections counted."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings, load_settings
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.serve.server import ServingWorker
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest, settings_hash
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.models import build_model
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import send_manifest
from tests.version_fixtures import expected_value, version_weights

# Runs again with kafka-python in CI (make test-integration-kafka-python): its Kafka path
# differs by client library.
pytestmark = pytest.mark.kafka_client

# Without the standardiser: test snapshots fill every tensor with the version number, and a
# filled variance buffer would change the function the expected values are computed from.
MODEL = {
    "name": "linear",
    "task": "regression",
    "input_shape": [4],
    "target_dim": 1,
    "params": {"standardize": False, "scale_targets": False},
}


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def settings(kafka_bootstrap: str, unique_name: str) -> Settings:
    create_topics(kafka_bootstrap, [unique_name])
    return load_settings(
        overrides={
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "topics": {"snapshots": unique_name},
            "model": MODEL,
            "serve": {"port": 0, "model_name": "m"},
        }
    )


@pytest.fixture
def writer(settings: Settings) -> Iterator[Callable[..., SnapshotManifest]]:
    writers: dict[str, SnapshotWriter] = {}
    model = build_model("linear", _spec(settings), settings.model.params)

    def write(version: int, hash_of: dict[str, Any] | None = None) -> SnapshotManifest:
        model_settings = hash_of or settings.model.model_dump(mode="json")
        digest = settings_hash(model_settings)
        if digest not in writers:
            writers[digest] = SnapshotWriter(
                kafka=KafkaConnection.from_settings(settings.kafka),
                topic=settings.topics.snapshots,
                model_name="linear",
                settings_hash=digest,
                chunk_bytes=512 * 1024,
            )
        request = SnapshotRequest(
            version=version,
            run_id="run-a",
            tensors=version_weights(model, version),
            data_watermark=time.time() - 5.0,
            offsets={0: version},
            created_at=time.time(),
        )
        return writers[digest].write(request)

    yield write
    for each in writers.values():
        each.close(5.0)


def _spec(settings: Settings) -> Any:
    from streamtrain.sample.spec import spec_for_model

    return spec_for_model(settings.model)


def _infer(url: str) -> tuple[str, float]:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    doc = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=REQUEST_S).json()
    return doc["model_version"], doc["outputs"][0]["data"][0]


def _rejections(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=REQUEST_S).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "streamtrain_serve_rejected_snapshots":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["reason"]] = sample.value
    return counts


def _publish_forged(settings: Settings, good: SnapshotManifest, version: int, chunks: bool) -> None:
    """A manifest for run-a/<version> whose chunks are garbage (checksum) or absent (incomplete)."""
    sid = f"run-a/{version}"
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    topic = settings.topics.snapshots
    first = None
    if chunks:
        garbage = hashlib.sha256(b"x").digest() * (good.size_bytes // 32 + 1)
        sent = producer.send(
            topic,
            value=garbage[: good.size_bytes],
            key=wire.chunk_key("linear", sid, 0),
            headers=wire.chunk_headers("linear", sid, 0, 1),
            partition=0,
        )
        first = sent.get(timeout=REQUEST_S).offset
    manifest = good.model_copy(
        update={"version": version, "first_chunk_offset": first or good.first_chunk_offset}
    )
    send_manifest(producer, topic, "linear", sid, manifest.model_dump_json().encode(), timeout=10)
    producer.close(5)


def test_server_follows_snapshots_and_refuses_bad_ones(
    settings: Settings, writer: Callable[..., SnapshotManifest]
) -> None:
    worker: ServingWorker = build_worker(settings)
    url = worker.start()
    try:
        assert httpx.get(f"{url}/v2/health/live", timeout=REQUEST_S).status_code == 200
        assert httpx.get(f"{url}/v2/health/ready", timeout=REQUEST_S).status_code == 503
        good = writer(5)
        _wait(
            lambda: httpx.get(f"{url}/v2/health/ready", timeout=REQUEST_S).status_code == 200,
            "ready",
        )
        version, value = _infer(url)
        assert version == "5" and value == pytest.approx(expected_value(5, [1.0] * 4), rel=1e-5)

        before = _rejections(url)
        writer(3)  # older than live
        writer(10, hash_of={**settings.model.model_dump(mode="json"), "target_dim": 2})
        _publish_forged(settings, good, 11, chunks=True)  # corrupt bytes
        _publish_forged(settings, good, 12, chunks=False)  # truncated: chunks missing
        writer(7)  # the next good one
        _wait(lambda: _infer(url)[0] == "7", "version 7")

        def rejected(reason: str) -> float:
            return _rejections(url).get(reason, 0.0) - before.get(reason, 0.0)

        _wait(lambda: rejected("incomplete") >= 1, "the truncated snapshot to be rejected")
        assert rejected("stale") == 1
        assert rejected("config_mismatch") == 1
        assert rejected("checksum") == 1
        assert _infer(url)[1] == pytest.approx(expected_value(7, [1.0] * 4), rel=1e-5)
        metrics = httpx.get(f"{url}/metrics/", timeout=REQUEST_S).text
        assert "streamtrain_serve_model_version 7.0" in metrics
    finally:
        worker.stop()

    # A server started after publishing stopped comes up with the newest valid snapshot.
    again = build_worker(settings)
    url = again.start()
    try:
        _wait(
            lambda: httpx.get(f"{url}/v2/health/ready", timeout=REQUEST_S).status_code == 200,
            "ready again",
        )
        assert httpx.get(f"{url}/v2/models/m", timeout=REQUEST_S).json()["versions"] == ["7"]
        assert _infer(url)[0] == "7"
    finally:
        again.stop()
