"""A publisher's two lanes never interleave on partition 0: the base lane's manifest is not
written between the delta lane's first chunk and its manifest (``writer.py``, the shared
partition-0 lock).

A reader's backward scan jumps from a manifest to the record before its first chunk without
reading what it passes (``scan.py``): a base manifest written inside a delta-lane snapshot's
span was passed over, so ``newest_first()`` did not list the newest base, and a new replica
loaded the base before it. Seen by the issue-26 checks in 5 of ~16 loaded runs; here the base
lane's write is placed inside the span on purpose: the delta-lane writer stops after its
chunks, before its manifest, until the base lane's write has returned or 3 s have passed."""

from __future__ import annotations

import threading

import pytest

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.writer import BASE_PARTITION, SnapshotWriter
from tests.delta_fixtures import build_model, snapshot_request

HASH = "e" * 64
_WAIT_S = 3.0  # how long the delta lane holds its span open for the base lane's write


def _writer(
    kafka: KafkaConnection, topic: str, lane: str, lock: threading.Lock | None
) -> SnapshotWriter:
    return SnapshotWriter(
        kafka=kafka,
        topic=topic,
        model_name="m",
        settings_hash=HASH,
        chunk_bytes=4096,
        lane=lane,
        chunk_partition=BASE_PARTITION if lane == wire.BASE_LANE else 0,
        partition_zero=lock,
    )


def _race(
    kafka: KafkaConnection, topic: str, lock: threading.Lock | None, monkeypatch: pytest.MonkeyPatch
) -> tuple[SnapshotWriter, SnapshotManifest, SnapshotWriter, SnapshotManifest]:
    """The delta lane writes version 1 (a whole snapshot) and, while its chunks are on the
    topic and its manifest is not, the base lane writes version 2."""
    deltas, bases = _writer(kafka, topic, "", lock), _writer(kafka, topic, wire.BASE_LANE, lock)
    chunks_sent, base_written = threading.Event(), threading.Event()
    send_manifest = deltas._send_manifest

    def held_open(producer: object, manifest: SnapshotManifest) -> int:
        chunks_sent.set()
        base_written.wait(_WAIT_S)  # the base lane blocks on the lock, or writes meanwhile
        return send_manifest(producer, manifest)  # type: ignore[arg-type]

    monkeypatch.setattr(deltas, "_send_manifest", held_open)
    written: dict[str, SnapshotManifest] = {}

    def write(name: str, writer: SnapshotWriter, version: int, done: threading.Event) -> None:
        written[name] = writer.write(
            snapshot_request(build_model(seed=version), version, "r", None)
        )
        done.set()

    delta_lane = threading.Thread(target=write, args=("delta", deltas, 1, threading.Event()))
    delta_lane.start()
    assert chunks_sent.wait(60), "the delta lane never sent its chunks"
    base_lane = threading.Thread(target=write, args=("base", bases, 2, base_written))
    base_lane.start()
    for thread in (delta_lane, base_lane):
        thread.join(120)
        assert not thread.is_alive()
    try:
        return deltas, written["delta"], bases, written["base"]
    finally:
        deltas.close(10)
        bases.close(10)


def _listed(kafka: KafkaConnection, topic: str) -> list[int]:
    subscriber = SnapshotSubscriber(kafka=kafka, topic=topic, settings_hash=HASH)
    try:
        return [received.manifest.version for received in subscriber.newest_first(60)]
    finally:
        subscriber.close()


@pytest.mark.parametrize("shared_lock", [True, False], ids=["lanes-share-the-lock", "no-lock"])
def test_a_base_manifest_never_lands_inside_a_delta_lane_span(
    kafka_connection: KafkaConnection,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    shared_lock: bool,
) -> None:
    create_topics(kafka_connection, [unique_name], partitions=2)
    lock = threading.Lock() if shared_lock else None
    deltas, delta, bases, base = _race(kafka_connection, unique_name, lock, monkeypatch)
    assert delta.first_chunk_offset is not None and deltas.manifest_offset is not None
    assert bases.manifest_offset is not None and base.chunk_partition == BASE_PARTITION
    inside = delta.first_chunk_offset < bases.manifest_offset < deltas.manifest_offset
    listed = _listed(kafka_connection, unique_name)
    if shared_lock:  # what a publisher does (publisher.py gives both lanes one lock)
        assert not inside, (delta.first_chunk_offset, bases.manifest_offset)
        assert bases.manifest_offset > deltas.manifest_offset
        assert listed == [2, 1]  # the newest base is found
    else:  # the defect the lock mends: the scan's jump from the delta passes over the base
        assert inside, (delta.first_chunk_offset, bases.manifest_offset)
        assert listed == [1]
