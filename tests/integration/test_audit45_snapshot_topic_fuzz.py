"""Audit 45, step 1: garbage written to a running server's snapshot topic by any Kafka
client (records without or with odd headers, manifests announcing 10^12 bytes or 10^9
chunks, chunks of snapshots that never end, a hostile safetensors header under a manifest
that vouches for it, headers whose offsets pass the data, duplicated chunks). The server
keeps serving its version, logs one line per refusal and counts it by reason on the real
/metrics; it then loads the next good snapshot; and a replica started afterwards, which
reads all of it back from the topic, becomes ready on that good snapshot.

Before the fix in ``snapshot/mapped.py`` the deeply nested header (newest by version) made
the new replica's scan raise on every attempt: it never became ready."""

from __future__ import annotations

import json
import logging
import struct
import time

import httpx
import pytest
from kafka import KafkaProducer

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings
from streamtrain.kafka import create_topics
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.payload import encode_state, sha256_hex
from tests.integration.snapshot_harness import publish, serve_settings, wait, weights
from tests.integration.trainer_harness import scrape

REJECTED = "streamtrain_serve_rejected_snapshots_total"
MODEL = "linear"


def _rejected(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for key, value in scrape(f"{url}/metrics").items():
        if key.startswith(REJECTED + "{"):
            reason = key.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = counts.get(reason, 0.0) + value
    return counts


def _manifest(settings: Settings, sid: str, payload: bytes, first: int, **over: object) -> bytes:
    run_id, version = sid.rsplit("/", 1)
    _, infos = encode_state(weights(settings, 1))
    fields: dict[str, object] = dict(
        model_name=MODEL, settings_hash=settings_hash(settings.model.model_dump(mode="json")),
        run_id=run_id, version=int(version), created_at=time.time(), data_watermark=None,
        offsets={}, tensors=[i.model_dump() for i in infos], size_bytes=len(payload),
        sha256=sha256_hex(payload), chunk_count=1, chunk_bytes=max(1, len(payload)),
        first_chunk_offset=first,
    )  # fmt: skip
    fields.update(over)
    return json.dumps(fields).encode()


def _safetensors(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


class _Writer:
    """Raw records on partition 0 of the snapshot topic, as any Kafka client could write."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.topic = settings, settings.topics.snapshots
        self.producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)

    def send(self, value: bytes | None, headers: list[tuple[str, bytes]], key: bytes = b"k") -> int:
        future = self.producer.send(self.topic, value=value, key=key, headers=headers, partition=0)
        return int(future.get(timeout=30).offset)

    def chunk(self, sid: str, index: int, count: int, data: bytes) -> int:
        return self.send(data, wire.chunk_headers(MODEL, sid, index, count, sha256_hex(data)))

    def manifest(self, sid: str, value: bytes) -> int:
        return self.send(value, wire.manifest_headers(MODEL, sid))

    def snapshot(self, sid: str, payload: bytes, **over: object) -> None:
        """One chunk then a manifest that vouches for it (size, sha256): only the payload's
        own checks can refuse it."""
        first = self.chunk(sid, 0, 1, payload)
        self.manifest(sid, _manifest(self.settings, sid, payload, first, **over))

    def garbage(self) -> set[str]:
        """Every kind of garbage; the reasons the server must count for it."""
        self.send(b"\x00not a snapshot", [])  # no headers
        self.send(None, [])  # a tombstone
        self.send(b"x", [(wire.KIND, b"chunk"), (wire.SNAPSHOT, b"\xff\xfe/1")])  # not UTF-8
        self.send(b"x", wire.chunk_headers(MODEL, "evil/1", 0, 1)[:1])  # no snapshot id
        for odd in (b"5/3", b"-1/3", b"\xd9\xa1/3", b"0/0", b"1e3/2000"):  # \xd9\xa1: Arabic 1
            self.send(b"x", [(wire.KIND, b"chunk"), (wire.SNAPSHOT, b"e/1"), (wire.CHUNK, odd)])
        self.send(b"x", [(wire.KIND, b"blob"), (wire.SNAPSHOT, b"e/1")])
        self.chunk("evil/2", 0, 10**9, b"y" * 1024)  # a chunk announcing 10^9 siblings
        self.manifest("evil/3", _manifest(self.settings, "evil/3", b"z", 0, size_bytes=10**12,
                                          chunk_bytes=1000, chunk_count=10**9))  # fmt: skip
        self.manifest("evil/4", _manifest(self.settings, "evil/4", b"z", 0, size_bytes=10**9,
                                          chunk_bytes=1, chunk_count=10**9))  # fmt: skip
        self.manifest("evil/5", b"\xff" * 64)  # not JSON
        self.manifest("evil/6", b"[" * 50_000 + b"]" * 50_000)  # deep JSON
        for ghost in range(6):  # chunks of snapshots whose manifest never comes
            for index in range(3):
                self.chunk(f"ghost{ghost}/9", index, 4, b"g" * 512)
        # A hostile safetensors header under a manifest vouching for it, newest by version.
        self.snapshot("evil/1000", _safetensors(b"[" * 100_000 + b"]" * 100_000))
        past = b'{"weight":{"dtype":"F32","shape":[4],"data_offsets":[0,1000000]}}'
        self.snapshot("evil/999", _safetensors(past, b"\0" * 16))
        self.snapshot("evil/998", _safetensors(b'{"w":{"dtype":"F32","shape":[0,' + b"9" * 30
                                               + b'],"data_offsets":[0,0]}}'))  # fmt: skip
        self.snapshot("evil/997", b"\x01\x00\x00")  # a truncated header length
        return {"bad_record", "bad_manifest", "size", "incomplete", "corrupt"}

    def duplicated(self, version: int) -> None:
        """A good snapshot whose chunk 1 is written twice (a producer's retry)."""
        payload, _ = encode_state(weights(self.settings, version))
        pieces = [payload[i : i + 64] for i in range(0, len(payload), 64)]
        sid = f"run-a/{version}"
        first = self.chunk(sid, 0, len(pieces), pieces[0])
        for index, piece in enumerate(pieces[1:], start=1):
            self.chunk(sid, index, len(pieces), piece)
            if index == 1:
                self.chunk(sid, index, len(pieces), piece)
        value = _manifest(self.settings, sid, payload, first, chunk_count=len(pieces),
                          chunk_bytes=64, offsets={0: version})  # fmt: skip
        self.manifest(sid, value)

    def close(self) -> None:
        self.producer.close(5)


def _version(url: str) -> str | None:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]}
    response = httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=10)
    return str(response.json()["model_version"]) if response.status_code == 200 else None


def test_garbage_on_the_snapshot_topic_is_refused_counted_and_survived(
    kafka_bootstrap: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=wire.SNAPSHOT_PARTITIONS)
    settings = serve_settings(kafka_bootstrap, unique_name)
    worker = build_worker(settings)
    url = worker.start()
    writer = _Writer(settings)
    replica = None
    try:
        publish(settings, 5)
        wait(lambda: _version(url) == "5", "version 5 live")
        before = _rejected(url)
        with caplog.at_level(logging.WARNING):
            reasons = writer.garbage()
            writer.duplicated(6)
            wait(lambda: _version(url) == "6", "version 6 (a chunk duplicated) live")
            after = _rejected(url)
        grew = {r for r in reasons if after.get(r, 0.0) > before.get(r, 0.0)}
        assert grew == reasons, (before, after)
        assert after.get("incomplete", 0.0) - before.get("incomplete", 0.0) >= 2  # ghosts
        assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
        refusals = [r for r in caplog.records if " rejected (" in r.getMessage()]
        assert len(refusals) >= 10
        assert all("\n" not in r.getMessage() and r.exc_info is None for r in refusals)
        assert not [r for r in caplog.records if "cannot read snapshot topic" in r.getMessage()]
        # A replica started now reads all of it back, the hostile header newest by version.
        replica = build_worker(settings)
        replica_url = replica.start()
        wait(lambda: _version(replica_url) == "6", "the new replica serving version 6", 90)
        assert {"corrupt", "bad_manifest", "size"} <= set(_rejected(replica_url))
        publish(settings, 7)
        wait(lambda: _version(url) == "7" and _version(replica_url) == "7", "version 7 on both")
    finally:
        writer.close()
        if replica is not None:
            replica.stop()
        worker.stop()
