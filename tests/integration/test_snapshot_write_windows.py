"""A base written window by window (the base lane's writer, issue 26): each window of chunks
is acknowledged before the next is produced, and what reaches the topic is the same base.
The delta lane writes a whole snapshot (a process's first) in windows too, so the producer
never queues a whole model's chunks at once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.snapshot import publisher as publisher_module
from streamtrain.snapshot import writer as writer_module
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.writer import SnapshotWriter
from tests.delta_fixtures import build_model, model_state, snapshot_request
from tests.integration.snapshot_harness import wait

HASH = "f" * 64


def _count_flushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records, for every flush of a snapshot writer's producer, the records sent before it."""
    flushes: list[int] = []
    real_producer = writer_module.record_producer

    def counting_producer(*args: Any, **kwargs: Any) -> Any:
        producer = real_producer(*args, **kwargs)
        send, flush = producer.send, producer.flush
        sent = [0]

        def counted_send(*a: Any, **k: Any) -> Any:
            sent[0] += 1
            return send(*a, **k)

        def counted_flush(*a: Any, **k: Any) -> Any:
            flushes.append(sent[0])
            return flush(*a, **k)

        producer.send, producer.flush = counted_send, counted_flush
        return producer

    monkeypatch.setattr(writer_module, "record_producer", counting_producer)
    return flushes


def _assert_windows_and_read_back(
    kafka: KafkaConnection, topic: str, flushes: list[int], manifest: SnapshotManifest, model: Any
) -> None:
    assert manifest.chunk_count > 8  # several windows of 4 chunks
    windows = -(-manifest.chunk_count // 4)
    # one flush per window of at most 4 chunks, then the manifest's
    assert flushes == [min(4 * (i + 1), manifest.chunk_count) for i in range(windows)] + [
        manifest.chunk_count + 1
    ]
    subscriber = SnapshotSubscriber(kafka=kafka, topic=topic, settings_hash=HASH)
    try:
        read = subscriber.latest(30)
    finally:
        subscriber.close()
    assert read is not None and read.manifest.snapshot_id == manifest.snapshot_id
    for name, tensor in model_state(model).items():
        assert torch.equal(read.tensors[name], tensor), name


def test_a_base_written_in_windows_reads_back_whole(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = KafkaConnection(kafka_bootstrap)
    create_topics(kafka, [unique_name])
    flushes = _count_flushes(monkeypatch)
    writer = SnapshotWriter(
        kafka=kafka,
        topic=unique_name,
        model_name="m",
        settings_hash=HASH,
        chunk_bytes=1024,
        lane="base",
        window_bytes=4096,
    )
    model = build_model(seed=3)
    try:
        manifest = writer.write(snapshot_request(model, 7, "run", None))
    finally:
        writer.close(10)
    _assert_windows_and_read_back(kafka, unique_name, flushes, manifest, model)


def test_the_delta_lane_writes_a_whole_snapshot_in_windows(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = KafkaConnection(kafka_bootstrap)
    create_topics(kafka, [unique_name])
    flushes = _count_flushes(monkeypatch)
    monkeypatch.setattr(publisher_module, "DELTA_WINDOW_BYTES", 4096)
    written: list[SnapshotManifest] = []
    real_write = SnapshotWriter.write

    def recorded_write(self: SnapshotWriter, *args: Any, **kwargs: Any) -> SnapshotManifest:
        manifest = real_write(self, *args, **kwargs)
        written.append(manifest)
        return manifest

    monkeypatch.setattr(SnapshotWriter, "write", recorded_write)
    publisher = SnapshotPublisher(
        kafka=kafka, topic=unique_name, model_name="m", settings_hash=HASH, chunk_bytes=1024
    )
    model = build_model(seed=3)
    try:
        publisher.offer(snapshot_request(model, 7, "run", None))  # a whole first snapshot
        assert publisher.flush(60)
    finally:
        publisher.close(10)
    assert [m.kind for m in written] == ["base"]
    _assert_windows_and_read_back(kafka, unique_name, flushes, written[0], model)


def test_both_lanes_open_their_producers_when_they_start_not_at_the_first_snapshot(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base lane's first write is the first rotation, minutes into training, and the delta
    lane's the first snapshot: each lane's producer is made when its thread starts
    (``SnapshotWriter.open``), and the first writes reuse them (making a client there held
    the GIL while training ran: issue 26)."""
    kafka = KafkaConnection(kafka_bootstrap)
    create_topics(kafka, [unique_name], 2)
    made: list[str] = []
    real_producer = writer_module.record_producer

    def recording_producer(*args: Any, **kwargs: Any) -> Any:
        made.append(threading.current_thread().name)
        return real_producer(*args, **kwargs)

    monkeypatch.setattr(writer_module, "record_producer", recording_producer)
    publisher = SnapshotPublisher(
        kafka=kafka, topic=unique_name, model_name="m", settings_hash=HASH, chunk_bytes=1024
    )
    lane = publisher._bases
    lanes = sorted([f"snapshot-base-lane-{unique_name}", f"snapshot-publisher-{unique_name}"])
    try:
        wait(lambda: lane._writer._producer is not None, "the base lane's producer", 30)
        wait(lambda: publisher._writer._producer is not None, "the delta lane's producer", 30)
        assert sorted(made) == lanes  # one each, on its own thread, before any snapshot
        opened = (lane._writer._producer, publisher._writer._producer)
        model = build_model(seed=3)
        assert lane.offer(snapshot_request(model, 5, "r", None))
        assert lane.flush(30)
        publisher.offer(snapshot_request(model, 6, "r", None))
        assert publisher.flush(30)
        assert publisher.backlog() == "none", "the delta lane's snapshot was written"
        # both were written with the producers made at start
        assert (lane._writer._producer, publisher._writer._producer) == opened
        assert sorted(made) == lanes
    finally:
        publisher.close(30)
