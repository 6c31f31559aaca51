"""Snapshots through a real broker: publish, tail, find the newest, refuse broken ones."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
from kafka import KafkaProducer

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest, settings_hash, snapshot_id
from streamtrain.snapshot.payload import encode_state, sha256_hex, split_chunks
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot
from streamtrain.train.hooks import SnapshotRequest
from tests.integration.snapshot_harness import send_manifest
from tests.metrics_scrape import Exporter

# Runs again with kafka-python in CI (make test-integration-kafka-python): its Kafka path
# differs by client library.
pytestmark = pytest.mark.kafka_client

HASH = settings_hash({"name": "mlp", "input_shape": [16]})
WAIT = 15.0
SMALL_CHUNK = 4096

Result = ReceivedSnapshot | RejectedSnapshot


def _state(seed: int, rows: int = 375) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # rows=375: 375 x 1000 float32 = 1.5 MB, three 512 KiB chunks
    return {
        "encoder.weight": torch.randn(rows, 1000, generator=gen),
        "encoder.bias": torch.randn(rows, generator=gen),
        "head.weight": torch.randn(2, rows, generator=gen).to(torch.bfloat16),
    }


def _request(version: int, state: dict[str, torch.Tensor]) -> SnapshotRequest:
    return SnapshotRequest(
        version=version,
        run_id="run-a",
        tensors=state,
        data_watermark=1000.0 + version,
        offsets={0: version * 10},
        created_at=time.time(),
    )


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: str) -> str:
    create_topics(kafka_bootstrap, [unique_name])
    return unique_name


@pytest.fixture
def options(kafka_connection: KafkaConnection) -> KafkaConnection:
    return kafka_connection


@pytest.fixture
def subscriber(options: KafkaConnection, topic: str) -> Iterator[SnapshotSubscriber]:
    sub = SnapshotSubscriber(kafka=options, topic=topic, settings_hash=HASH)
    yield sub
    sub.close()


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=4 * 1024 * 1024)
    yield prod
    prod.close()


def _collect(sub: SnapshotSubscriber, count: int) -> list[Result]:
    """Poll until ``count`` results arrived or WAIT passed."""
    results: list[Result] = []
    deadline = time.monotonic() + WAIT
    while len(results) < count and time.monotonic() < deadline:
        results.extend(sub.poll(timeout_s=0.5))
    return results


def _hand_made(
    producer: KafkaProducer,
    topic: str,
    state: dict[str, torch.Tensor],
    version: int,
    *,
    flip_byte_in: int | None = None,
    drop_chunk: int | None = None,
    config_hash: str = HASH,
    manifest_value: bytes | None = None,
    chunks_only: range | None = None,
    first_chunk_offset: int | None = None,
) -> int:
    """Write a snapshot the way the publisher does, with one chosen defect; return the offset
    of its first chunk written."""
    payload, infos = encode_state(state)
    pieces = split_chunks(payload, SMALL_CHUNK)
    sid = snapshot_id("run-a", version)
    offsets: list[int] = []
    for i, piece in enumerate(pieces):
        if i == drop_chunk or (chunks_only is not None and i not in chunks_only):
            continue
        value = bytearray(piece)
        if i == flip_byte_in:
            value[len(value) // 2] ^= 0x01
        future = producer.send(
            topic,
            value=bytes(value),
            key=wire.chunk_key("mlp", sid, i),
            headers=wire.chunk_headers("mlp", sid, i, len(pieces)),
            partition=0,
        )
        offsets.append(future.get(timeout=WAIT).offset)
    if chunks_only is not None and chunks_only.stop < len(pieces):
        return min(offsets)
    if first_chunk_offset is None:
        first_chunk_offset = min(offsets)
    manifest = SnapshotManifest(
        model_name="mlp",
        settings_hash=config_hash,
        run_id="run-a",
        version=version,
        created_at=time.time(),
        data_watermark=None,
        offsets={0: version},
        tensors=infos,
        size_bytes=len(payload),
        sha256=sha256_hex(payload),
        chunk_count=len(pieces),
        chunk_bytes=SMALL_CHUNK,
        first_chunk_offset=first_chunk_offset,
    )
    value = manifest_value or manifest.model_dump_json().encode()
    send_manifest(producer, topic, "mlp", sid, value, timeout=WAIT)
    return first_chunk_offset


def test_published_snapshots_arrive_verified_in_order_and_bit_identical(
    options: KafkaConnection,
    topic: str,
    subscriber: SnapshotSubscriber,
    trainer_metrics: Exporter,
) -> None:
    assert subscriber.latest(timeout_s=WAIT) is None  # empty topic
    published_before = trainer_metrics.value("streamtrain_snapshot_published_total")
    publisher = SnapshotPublisher(kafka=options, topic=topic, model_name="mlp", settings_hash=HASH)
    states = {v: _state(v) for v in (10, 20, 30)}
    for version, state in states.items():
        publisher.offer(_request(version, state))
        assert publisher.flush(WAIT)
    publisher.close(WAIT)
    after = trainer_metrics.scrape()
    assert after.value("streamtrain_snapshot_published_total") == published_before + 3
    assert after.value("streamtrain_snapshot_version") == 30

    results = _collect(subscriber, 3)
    assert all(isinstance(r, ReceivedSnapshot) for r in results), results
    received = [r for r in results if isinstance(r, ReceivedSnapshot)]
    assert [r.manifest.version for r in received] == [10, 20, 30]
    for r in received:
        assert _same(r.tensors, states[r.manifest.version])
        assert r.manifest.chunk_count == 3
        assert r.manifest.data_watermark == 1000.0 + r.manifest.version
        assert r.manifest.offsets == {0: r.manifest.version * 10}
        assert r.manifest.first_chunk_offset is not None
    assert subscriber.poll(timeout_s=0.2) == []


def test_subscriber_started_after_the_trainer_stopped_finds_the_newest(
    options: KafkaConnection, topic: str
) -> None:
    publisher = SnapshotPublisher(
        kafka=options,
        topic=topic,
        model_name="mlp",
        settings_hash=HASH,
        chunk_bytes=SMALL_CHUNK,
    )
    for version in (1, 2):
        publisher.offer(_request(version, _state(version, rows=8)))
        assert publisher.flush(WAIT)
    publisher.close(WAIT)

    late = SnapshotSubscriber(kafka=options, topic=topic, settings_hash=HASH)
    try:
        newest = late.latest(timeout_s=WAIT)
        assert newest is not None and newest.manifest.version == 2
        assert _same(newest.tensors, _state(2, rows=8))
        assert late.poll(timeout_s=0.2) == []  # poll continues after what latest() covered
        again = SnapshotPublisher(kafka=options, topic=topic, model_name="mlp", settings_hash=HASH)
        again.offer(_request(3, _state(3, rows=8)))
        again.close(WAIT)
        [third] = _collect(late, 1)
        assert isinstance(third, ReceivedSnapshot) and third.manifest.version == 3
    finally:
        late.close()


def test_broken_snapshots_are_rejected_with_their_reason(
    topic: str, subscriber: SnapshotSubscriber, producer: KafkaProducer
) -> None:
    assert subscriber.latest(timeout_s=WAIT) is None
    state = _state(0, rows=8)
    _hand_made(producer, topic, state, 1, flip_byte_in=2)
    _hand_made(producer, topic, state, 2, drop_chunk=1)
    _hand_made(producer, topic, state, 3, config_hash=settings_hash({"name": "cnn"}))
    _hand_made(producer, topic, state, 4, manifest_value=b'{"format": "something else"}')
    _hand_made(producer, topic, state, 5)
    results = _collect(subscriber, 5)
    summary = [
        (r.reason, r.version) if isinstance(r, RejectedSnapshot) else ("ok", r.manifest.version)
        for r in results
    ]
    assert summary == [
        ("checksum", 1),
        ("incomplete", 2),
        ("config_mismatch", 3),
        ("bad_manifest", 4),
        ("ok", 5),
    ]
    assert all("run-a/" in r.detail for r in results if isinstance(r, RejectedSnapshot))


def test_latest_skips_a_broken_newest_snapshot(
    options: KafkaConnection, topic: str, producer: KafkaProducer
) -> None:
    _hand_made(producer, topic, _state(1, rows=8), 1)
    _hand_made(producer, topic, _state(2, rows=8), 2)
    _hand_made(producer, topic, _state(3, rows=8), 3, flip_byte_in=0)
    sub = SnapshotSubscriber(kafka=options, topic=topic, settings_hash=HASH)
    try:
        newest = sub.latest(timeout_s=WAIT)
        assert newest is not None and newest.manifest.version == 2
        assert _same(newest.tensors, _state(2, rows=8))
        skipped = sub.poll(timeout_s=0.2)
        assert [(r.reason, r.version) for r in skipped if isinstance(r, RejectedSnapshot)] == [
            ("checksum", 3)
        ]
    finally:
        sub.close()


def test_tail_joining_mid_snapshot_reads_back_the_chunks_it_missed(
    topic: str, subscriber: SnapshotSubscriber, producer: KafkaProducer
) -> None:
    state = _state(4, rows=8)
    chunk_count = len(split_chunks(encode_state(state)[0], SMALL_CHUNK))
    assert chunk_count >= 3
    first = _hand_made(producer, topic, state, 7, chunks_only=range(0, 2))
    assert subscriber.latest(timeout_s=WAIT) is None  # chunks but no manifest yet
    rest = range(2, chunk_count)
    _hand_made(producer, topic, state, 7, chunks_only=rest, first_chunk_offset=first)
    [result] = _collect(subscriber, 1)
    assert isinstance(result, ReceivedSnapshot), result
    assert _same(result.tensors, state)


def test_subscriber_started_before_the_topic_exists_gets_the_first_snapshot(
    kafka_bootstrap: str, options: KafkaConnection, unique_name: str
) -> None:
    sub = SnapshotSubscriber(kafka=options, topic=unique_name, settings_hash=HASH)
    try:
        assert sub.latest(timeout_s=WAIT) is None
        assert sub.poll(timeout_s=0.3) == []
        create_topics(kafka_bootstrap, [unique_name])
        publisher = SnapshotPublisher(
            kafka=options, topic=unique_name, model_name="mlp", settings_hash=HASH
        )
        publisher.offer(_request(1, _state(1, rows=8)))
        publisher.close(WAIT)
        [first] = _collect(sub, 1)
        assert isinstance(first, ReceivedSnapshot) and first.manifest.version == 1
    finally:
        sub.close()
