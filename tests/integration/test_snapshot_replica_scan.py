"""A new replica on a topic holding several bases and their deltas (issue 26): it becomes
ready from the newest base and the deltas after it, reads that base before them, and never
reads an older base's chunks (the scan jumps over every snapshot's chunks, and the catch-up
order puts the newest base first, ``snapshot/scan.py``); its scan stops at that base, so no
older manifest is read either, unless that base is refused: then the scan resumes and the
replica is served from the base before it."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.kafka.confluent_consumer import ConfluentConsumer
from streamtrain.kafka.records import KafkaRecord
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import SnapshotWatcher
from streamtrain.snapshot import subscriber as subscriber_module
from streamtrain.snapshot.scan import Candidate
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.verify import ReceivedSnapshot
from streamtrain.train.row_tracker import row_sparse_parameters
from tests.delta_fixtures import (
    SparseTrainer,
    build_model,
    snapshot_request,
    sparse_publisher,
    tracked_request,
)

HASH = "d" * 64


def _subscriber(bootstrap: str, topic: str) -> SnapshotSubscriber:
    return SnapshotSubscriber(kafka=KafkaConnection(bootstrap), topic=topic, settings_hash=HASH)


@pytest.mark.parametrize("partitions", [1, 2])
def test_a_new_replica_reads_the_newest_base_and_not_the_older_ones(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch, partitions: int
) -> None:
    """One partition: every chunk on it; two: the scheduled bases' chunks on partition 1."""
    kafka = KafkaConnection(kafka_bootstrap)
    create_topics(kafka, [unique_name], partitions)
    trainer = SparseTrainer(base_every_deltas=2)  # base, delta, delta, base, ...
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=2048)
    for _ in range(9):
        trainer.train(3)
        publisher.offer(tracked_request(trainer, "run-d"))  # bases due go to the base lane
        assert publisher.flush(30)
    publisher.close(10)
    final, newest = trainer.state(), trainer.step

    lister = _subscriber(kafka_bootstrap, unique_name)
    published = [s.manifest for s in lister.newest_first(60)]
    lister.close()
    bases = sorted((m for m in published if m.kind == "base"), key=lambda m: m.version)
    assert len(bases) == 3 and len(published) == 9, [(m.kind, m.version) for m in published]
    # the first base is the process's first snapshot (delta lane); the scheduled ones are
    # the base lane's, on partition 1 when the topic has it
    assert [m.chunk_partition for m in bases] == [None] + [1 if partitions == 2 else None] * 2
    older_chunks = {
        (m.chunk_partition or 0, offset)
        for m in bases[:-1]
        for offset in range(m.first_chunk_offset or 0, (m.first_chunk_offset or 0) + m.chunk_count)
    }
    assert bases[0].chunk_count > 4  # each base is many records: skipping them is measurable

    replica = _subscriber(kafka_bootstrap, unique_name)
    # Below the subscriber: where the Kafka client was told to fetch from, and every record
    # it handed over (read() drops records before its start without a word, and the client
    # reads ahead of read()); the client fetches forward only, from the offsets assigned.
    fetch_starts, delivered, recording = _record_client(unique_name, monkeypatch)
    read_offsets: list[tuple[int, int]] = []  # (partition, offset) of every chunk read
    for partition in range(partitions):
        _record_reads(replica._readers.chunks(partition or None), read_offsets, monkeypatch)
    scanned = _record_starts(replica, monkeypatch)
    snapshots_read: list[tuple[str, int]] = []  # (kind, version), in the order read
    real_read_chunks = subscriber_module.read_chunks

    def read_chunks(reader: Any, candidate: Candidate, *args: Any) -> None:
        snapshots_read.append((candidate.manifest.kind, candidate.manifest.version))
        real_read_chunks(reader, candidate, *args)

    monkeypatch.setattr(subscriber_module, "read_chunks", read_chunks)
    real_read_after = replica._read_after

    def read_after(span: tuple[int, int, float], wanted: Any) -> Iterator[ReceivedSnapshot]:
        # the snapshots after the base: read forward in one pass, not one read each
        for snapshot in real_read_after(span, wanted):
            snapshots_read.append((snapshot.manifest.kind, snapshot.manifest.version))
            yield snapshot

    monkeypatch.setattr(replica, "_read_after", read_after)
    lineage = _serve_until(replica, newest, final)
    recording.clear()
    assert lineage == bases[-1].snapshot_id
    # Nothing of an older base left the broker: every fetch of the replica's clients started
    # after the older bases' chunks on its partition (so no fetch, read-ahead included, could
    # return one), and no record the client delivered is one of them.
    for partition in range(partitions):
        older_end = max((o for p, o in older_chunks if p == partition), default=-1)
        starts = [o for p, o in fetch_starts if p == partition]
        assert starts and min(starts) > older_end, (partition, sorted(starts), older_end)
    assert delivered and not older_chunks & set(delivered), sorted(older_chunks & set(delivered))
    # The newest base is read first (ready after one base), then the deltas after it,
    # oldest first; nothing older is read at all.
    after = sorted(m.version for m in published if m.version > bases[-1].version)
    assert snapshots_read == [("base", bases[-1].version)] + [("delta", v) for v in after]
    assert after, "no delta after the newest base: the order is not tested"
    assert read_offsets, "the replica read nothing"
    assert {p for p, _ in read_offsets} == set(range(partitions))
    assert not older_chunks & set(read_offsets), sorted(older_chunks & set(read_offsets))
    # The newest delta names its base's manifest by offset: the scan's second read is that
    # record, and it stops there, reading back only the one snapshot written just before it
    # (to check the base is in sequence), never the older ones.
    older_manifests = _manifest_offsets(kafka_bootstrap, unique_name, bases[-1].version)
    newest_base_at = _manifest_offsets(kafka_bootstrap, unique_name, bases[-1].version + 1)
    newest_base_at = sorted(set(newest_base_at) - set(older_manifests))
    assert len(newest_base_at) == 1 and older_manifests, (newest_base_at, older_manifests)
    assert scanned[:2] == [max(scanned), newest_base_at[0]], scanned
    reached = [o for o in older_manifests if o >= min(scanned)]
    assert len(reached) <= 1, (sorted(scanned), older_manifests)


def _record_client(
    topic: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[bool]]:
    """``(fetch starts, delivered records, switch)``, each ``(partition, offset)`` on ``topic``,
    taken from every confluent-kafka consumer in this process while ``switch`` is non-empty:
    the offsets each assignment hands librdkafka (it fetches from there, forward), and the
    records each poll returns."""
    starts: list[tuple[int, int]] = []
    delivered: list[tuple[int, int]] = []
    switch = [True]
    real_apply, real_poll = ConfluentConsumer._apply, ConfluentConsumer.poll

    def apply(self: ConfluentConsumer) -> None:
        real_apply(self)
        if switch and self.topic == topic:
            starts.extend(self._next.items())

    def poll(self: ConfluentConsumer, timeout_ms: int, max_records: int) -> Sequence[KafkaRecord]:
        records = real_poll(self, timeout_ms, max_records)
        if switch and self.topic == topic:
            delivered.extend((r.partition, r.offset) for r in records)
        return records

    monkeypatch.setattr(ConfluentConsumer, "_apply", apply)
    monkeypatch.setattr(ConfluentConsumer, "poll", poll)
    return starts, delivered, switch


def _serve_until(
    replica: SnapshotSubscriber, version: int, expected: dict[str, torch.Tensor]
) -> str:
    """Serve from ``replica`` until ``version`` is live, check it holds ``expected``; its
    lineage."""
    model = build_model(seed=5)
    slot = WeightSlot(model, shared=frozenset(row_sparse_parameters(model)))
    watcher = SnapshotWatcher(replica, slot, poll_timeout_s=0.1).start()
    try:
        deadline = time.monotonic() + 60
        while slot.info is None or slot.info.version != version:
            assert time.monotonic() < deadline, slot.info
            time.sleep(0.05)
        with slot.acquire() as lease:
            held = lease.model.state_dict()
            assert all(torch.equal(held[k], expected[k]) for k in expected)
            return lease.info.header.lineage
    finally:
        watcher.stop()


def _record_reads(
    reader: Any, reads: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = reader.read

    def recording(start: int, end: int, deadline: float):  # type: ignore[no-untyped-def]
        for record in original(start, end, deadline):
            reads.append((reader.partition, record.offset))
            yield record

    monkeypatch.setattr(reader, "read", recording)


def _record_starts(subscriber: SnapshotSubscriber, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Where each window of ``subscriber``'s manifest scan starts, filled in as it reads."""
    reader = subscriber._scan_reader
    starts: list[int] = []
    original = reader.read

    def recording(start: int, end: int, deadline: float):  # type: ignore[no-untyped-def]
        starts.append(start)
        yield from original(start, end, deadline)

    monkeypatch.setattr(reader, "read", recording)
    return starts


def _manifest_offsets(bootstrap: str, topic: str, below: int) -> list[int]:
    """Topic offsets of the manifests of versions below ``below`` (a whole scan)."""
    lister = _subscriber(bootstrap, topic)
    try:
        scan = lister._start_scan(60)
        assert scan is not None
        return [c.offset for c in scan.rest() if c.manifest.version < below]
    finally:
        lister.close()


def test_a_refused_newest_base_resumes_the_scan_and_the_base_before_serves(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = KafkaConnection(kafka_bootstrap)
    create_topics(kafka, [unique_name])
    trainer = SparseTrainer(base_every_deltas=2)  # base, delta, delta, base, delta, delta
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=2048)
    for _ in range(6):
        trainer.train(3)
        publisher.offer(trainer.request())
        assert publisher.flush(30)
    good, good_version = trainer.state(), trainer.step
    # The newest base holds a NaN: signed and whole, but the slot refuses it (non_finite).
    with torch.no_grad():
        next(iter(trainer.model.parameters())).view(-1)[0] = float("nan")
    publisher.offer(snapshot_request(trainer.model, good_version + 1, "run-d", None))
    assert publisher.flush(30)
    publisher.close(10)

    replica = _subscriber(kafka_bootstrap, unique_name)
    scanned = _record_starts(replica, monkeypatch)
    _serve_until(replica, good_version, good)
    # The scan resumed past the refused base, back to the oldest manifest on the topic.
    oldest = min(_manifest_offsets(kafka_bootstrap, unique_name, good_version + 2))
    assert min(scanned) <= oldest, (sorted(scanned), oldest)


def test_a_late_server_applies_a_base_and_32_deltas_in_a_bounded_number_of_reads(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server started after a base and 32 deltas is ready with every one applied, from a
    number of reads of the topic that does not grow with the deltas: the scan jumps from the
    newest delta to its base, and the deltas after the base are read forward in one pass (a
    server 15 s late spent 9.3 s on one scan window and one read per delta before)."""
    deltas = 32
    kafka = KafkaConnection(kafka_bootstrap)
    create_topics(kafka, [unique_name])
    trainer = SparseTrainer()  # the first snapshot a base, then deltas only
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=2048)
    for _ in range(1 + deltas):
        trainer.train(1)
        publisher.offer(tracked_request(trainer, "run-d"))
        assert publisher.flush(30)
    publisher.close(10)
    final, newest = trainer.state(), trainer.step

    replica = _subscriber(kafka_bootstrap, unique_name)
    scan_reads = _record_starts(replica, monkeypatch)
    chunk_reads: list[tuple[int, int]] = []
    _count_reads(replica._readers.chunks(None), chunk_reads, monkeypatch)
    one_by_one: list[tuple[str, int]] = []  # snapshots whose chunks were read on their own
    real_read_chunks = subscriber_module.read_chunks

    def read_chunks(reader: Any, candidate: Candidate, *args: Any) -> None:
        one_by_one.append((candidate.manifest.kind, candidate.manifest.version))
        real_read_chunks(reader, candidate, *args)

    monkeypatch.setattr(subscriber_module, "read_chunks", read_chunks)
    _serve_until(replica, newest, final)  # the tail starts after them: the catch-up did it
    assert one_by_one == [("base", 1)], one_by_one
    # two reads of chunks: the base's, then one pass over all the deltas after it
    assert len(chunk_reads) == 2 and chunk_reads[1][1] - chunk_reads[1][0] > deltas, chunk_reads
    # the newest manifest, the base's it names, the record before the base: not one per delta
    assert len(scan_reads) <= 4, scan_reads


def _count_reads(
    reader: Any, reads: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``read(start, end)`` of ``reader`` goes to ``reads``."""
    original = reader.read

    def counting(start: int, end: int, deadline: float):  # type: ignore[no-untyped-def]
        reads.append((start, end))
        yield from original(start, end, deadline)

    monkeypatch.setattr(reader, "read", counting)
