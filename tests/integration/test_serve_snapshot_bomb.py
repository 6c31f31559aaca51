"""A manifest announcing 2·10⁹ chunks costs a server nothing: memory follows what arrived."""

from __future__ import annotations

import time
from pathlib import Path

from kafka import KafkaProducer

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings
from streamtrain.kafka import create_topics
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest
from tests.integration.snapshot_harness import (
    publish,
    rejections,
    send_manifest,
    serve_settings,
    served_version,
    wait,
)

BOMB_CHUNKS = 2 * 10**9  # one-byte chunks: 2e9 bytes, under the 2 GiB size limit
RSS_SLACK = 64 * 1024**2


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _publish_bomb(settings: Settings, good: SnapshotManifest) -> None:
    """A few one-byte chunks claiming 2e9 siblings, then a schema-valid manifest for them."""
    sid = "bomb/11"
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    topic = settings.topics.snapshots
    try:
        offsets = [
            producer.send(
                topic,
                value=b"x",
                key=wire.chunk_key("linear", sid, i),
                headers=wire.chunk_headers("linear", sid, i, BOMB_CHUNKS),
                partition=0,
            )
            .get(timeout=30)
            .offset
            for i in range(3)
        ]
        manifest = good.model_copy(
            update={
                "run_id": "bomb",
                "version": 11,
                "size_bytes": BOMB_CHUNKS,
                "chunk_bytes": 1,
                "chunk_count": BOMB_CHUNKS,
                "first_chunk_offset": offsets[0],
            }
        )
        value = SnapshotManifest.model_validate(manifest.model_dump()).model_dump_json()
        assert len(value) < 1024  # the whole attack is one small record
        send_manifest(producer, topic, "linear", sid, value.encode())
    finally:
        producer.close(5)


def test_chunk_count_bomb_leaves_rss_flat(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    settings = serve_settings(kafka_bootstrap, unique_name)
    good = publish(settings, 5)
    running = build_worker(settings)
    url = running.start()
    late = None
    try:
        wait(lambda: served_version(url) == "5", "version 5")
        before = rejections(url).get("size", 0.0)
        rss_before = _rss_bytes()
        _publish_bomb(settings, good)
        wait(lambda: rejections(url).get("size", 0.0) - before >= 1, "the bomb refused")
        rss_running = _rss_bytes()
        assert served_version(url) == "5"

        # A replica started afterwards scans past the bomb on its way to version 5.
        started = time.monotonic()
        late = build_worker(settings)
        late_url = late.start()
        wait(lambda: served_version(late_url) == "5", "the new replica on version 5")
        rss_late = _rss_bytes()
        print(
            f"RSS before {rss_before / 2**20:.1f} MiB, after the running replica refused the "
            f"bomb {rss_running / 2**20:.1f} MiB, after a new replica scanned it "
            f"{rss_late / 2**20:.1f} MiB ({time.monotonic() - started:.2f} s to ready)"
        )
        assert rss_running - rss_before < RSS_SLACK
        assert rss_late - rss_before < RSS_SLACK
        wait(lambda: rejections(url).get("size", 0.0) - before >= 2, "the new replica's refusal")
    finally:
        running.stop()
        if late is not None:
            late.stop()
