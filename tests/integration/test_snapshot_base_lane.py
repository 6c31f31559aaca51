"""Base rotation without a freshness cliff (issue 26, item 4), on the real broker.

A scheduled base goes to the publisher's base lane (its own thread and producer) while deltas
keep flowing on theirs. The base lane's writes are held at a gate here, so "a base is being
published" lasts exactly as long as the test says, whatever the machine's load: the bound is
structural, not timed. While the base is held, every delta the trainer offers reaches the
server (it never waits behind the base: zero base publications); once the base is written,
the tailing server skips it (its deltas already passed it: no load, no ``stale``), later
deltas name it as their base, and a replica started afterwards loads it and applies the
deltas written while it was held, in order. Both end bit-identical to the trainer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from streamtrain.kafka import KafkaConnection, create_topics, partition_reader
from streamtrain.kafka.records import KafkaRecord
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import SnapshotWatcher
from streamtrain.snapshot import subscriber as subscriber_module
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotHeader, SnapshotManifest
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.snapshot.scan import Candidate
from streamtrain.snapshot.shadow import ShadowCopy
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.row_tracker import row_sparse_parameters
from tests.delta_fixtures import SparseTrainer, build_model, sparse_publisher, tracked_request
from tests.integration.snapshot_harness import wait
from tests.metrics_scrape import Exporter

HASH = "b" * 64


class _Server:
    """A slot and a watcher on ``topic``; its subscriber knows the live weights (as
    ``streamtrain serve`` wires it), so it can skip a base its deltas already passed."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        model = build_model(seed=7)
        self.slot = WeightSlot(model, shared=frozenset(row_sparse_parameters(model)))
        source = SnapshotSubscriber(
            kafka=KafkaConnection(bootstrap), topic=topic, settings_hash=HASH, live=self._live
        )
        self.watcher = SnapshotWatcher(source, self.slot, poll_timeout_s=0.1).start()

    def _live(self) -> SnapshotHeader | None:
        info = self.slot.info
        return None if info is None else info.header

    def version(self) -> int | None:
        info = self.slot.info
        return None if info is None else info.version

    def matches(self, state: dict[str, torch.Tensor]) -> bool:
        with self.slot.acquire() as lease:
            held = lease.model.state_dict()
            return all(torch.equal(held[name], tensor) for name, tensor in state.items())


class _BaseGate:
    """Holds every base-lane write until ``release``; records what the lane wrote."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.held = threading.Event()
        self.released = threading.Event()
        self.written: list[SnapshotManifest] = []
        self.held_versions: list[int] = []
        real = SnapshotWriter.write

        def write(writer: SnapshotWriter, request: SnapshotRequest, **names: Any) -> Any:
            if writer.lane != wire.BASE_LANE:
                return real(writer, request, **names)
            self.held_versions.append(request.version)
            self.held.set()
            assert self.released.wait(120), "the test never released the base lane"
            manifest = real(writer, request, **names)
            self.written.append(manifest)
            return manifest

        monkeypatch.setattr(SnapshotWriter, "write", write)
        # Every whole clone the publisher takes for the base lane (a model-sized copy).
        self.clones: list[int] = []
        real_base = ShadowCopy.base

        def base(shadow: ShadowCopy, request: SnapshotRequest) -> SnapshotRequest:
            self.clones.append(request.version)
            return real_base(shadow, request)

        monkeypatch.setattr(ShadowCopy, "base", base)


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    started: list[_Server] = []
    yield started
    for server in started:
        server.watcher.stop()


def _offer(trainer: SparseTrainer, publisher: SnapshotPublisher) -> SnapshotRequest:
    trainer.train(2)
    request = tracked_request(trainer, "run-l")
    publisher.offer(request)
    return request


def _await(server: _Server, version: int, what: str) -> None:
    wait(lambda: server.version() == version, what)


def _records(bootstrap: str, topic: str, partition: int) -> list[KafkaRecord]:
    reader = partition_reader(KafkaConnection(bootstrap), topic=topic, partition=partition)
    try:
        low, high = reader.bounds(time.monotonic() + 60)
        return list(reader.read(low, high, time.monotonic() + 60))
    finally:
        reader.close()


def _chunk_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Every chunk read-back a subscriber makes, as (partition, snapshot id)."""
    reads: list[tuple[int, str]] = []
    real = subscriber_module.read_chunks

    def read_chunks(reader: Any, candidate: Candidate, *args: Any) -> None:
        reads.append((reader.partition, candidate.manifest.snapshot_id))
        real(reader, candidate, *args)

    monkeypatch.setattr(subscriber_module, "read_chunks", read_chunks)
    return reads


@pytest.mark.parametrize("partitions", [2, 1])
def test_deltas_reach_the_server_while_a_base_is_written_and_both_replicas_end_exact(
    kafka_bootstrap: str,
    unique_name: str,
    servers: list[_Server],
    monkeypatch: pytest.MonkeyPatch,
    server_metrics: Exporter,
    caplog: pytest.LogCaptureFixture,
    partitions: int,
) -> None:
    """With the base partition (2), the base lane's chunks are on partition 1 and the tailing
    server never reads them; a topic a user made with one partition keeps working as before
    (the chunks beside the deltas, one warning)."""

    def rejected(reason: str) -> float:
        return server_metrics.value("streamtrain_serve_rejected_snapshots_total", reason=reason)

    create_topics(KafkaConnection(kafka_bootstrap), [unique_name], partitions)
    reads = _chunk_reads(monkeypatch)
    gate = _BaseGate(monkeypatch)
    trainer = SparseTrainer(base_every_deltas=2)  # full, delta, delta, scheduled base, ...
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=2048)
    servers.append(_Server(kafka_bootstrap, unique_name))
    tail = servers[0]
    before = {reason: rejected(reason) for reason in ("stale", "chain_gap", "incomplete")}
    try:
        first = _offer(trainer, publisher)
        assert first.rows is None  # the first snapshot of a process: full, on the delta lane
        wait(lambda: tail.version() == first.version, "the first base on the server")
        for _ in range(2):
            _await(tail, _offer(trainer, publisher).version, "a delta on the server")
        scheduled = _offer(trainer, publisher)
        assert scheduled.complete  # a scheduled base, rows only: to the base lane
        assert gate.held.wait(60), "the scheduled base never reached the base lane"
        # While the base is held, the deltas (and a second base falling due, which stays due
        # while the lane is busy) reach the server one by one: none waits behind the base.
        for _ in range(5):
            _await(tail, _offer(trainer, publisher).version, "a delta while the base is held")
        assert gate.written == [] and gate.held_versions == [scheduled.version]
        # A base due while the lane is busy is not cloned per delta: one clone, the held one.
        assert gate.clones == [scheduled.version]
        gate.released.set()
        assert publisher.flush(60)
        assert [m.version for m in gate.written] == [scheduled.version]
        # The next request folded while the lane is free becomes the base that fell due.
        for _ in range(3):
            _offer(trainer, publisher)
        assert publisher.flush(60)
        assert len(gate.written) == 2 and gate.written[1].version > scheduled.version
        # A delta names the newest base *published* when it is written: those offered while
        # the second base was still being written name the first. One offered now names the
        # newest (or, falling due, is a base itself).
        last = _offer(trainer, publisher)
        assert publisher.flush(60)
        wait(lambda: tail.version() == last.version, "the newest delta on the tailing server")
        newest_base = gate.written[-1].snapshot_id
        wait(
            lambda: tail.slot.info is not None and tail.slot.info.header.lineage == newest_base,
            "a delta naming the newest base",
        )
        # The tailing server never read the chunks of a base lane base a delta came after
        # (it left each for later and the delta passed it); the last one, which no delta
        # followed (a trainer gone quiet), it read after waiting for one.
        written = {m.snapshot_id for m in gate.written}
        passed = written - {f"run-l/{last.version}"}
        assert not [read for read in reads if read[1] in passed]
        if partitions == 2 and last.complete:  # read from partition 1 after the wait
            assert reads == [(1, f"run-l/{last.version}")]
        # A replica started now: the newest base, then the deltas after it, in order.
        servers.append(_Server(kafka_bootstrap, unique_name))
        late = servers[1]
        wait(lambda: late.version() == last.version, "the late replica on the newest delta")
    finally:
        gate.released.set()
        publisher.close(30)
    final = trainer.state()
    assert tail.matches(final)
    assert late.matches(final)
    info = late.slot.info
    assert info is not None and info.header.lineage == newest_base
    # The tailing server skipped the bases its deltas had passed: none refused as stale, no
    # gap in the chain, no assembly abandoned (a delta's chunks never abandon the base's).
    assert {reason: rejected(reason) for reason in before} == before
    # The late replica read the newest base's chunks from where its manifest said.
    assert (partitions - 1, newest_base) in reads
    _check_layout(kafka_bootstrap, unique_name, partitions, written, caplog)


def _check_layout(
    bootstrap: str,
    topic: str,
    partitions: int,
    base_lane: set[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Partition 0 holds every manifest and, with the base partition, no chunk of a base lane
    base; partition 1 holds those chunks only. One partition: all of it on 0, one warning."""
    manifests: dict[str, SnapshotManifest] = {}
    chunks_on_0: set[str] = set()
    for record in _records(bootstrap, topic, 0):
        header = wire.parse_headers(record.headers)
        assert header is not None
        if header.kind == "manifest":
            manifests[header.snapshot_id] = SnapshotManifest.model_validate_json(
                bytes(record.value or b"")
            )
        else:
            chunks_on_0.add(header.snapshot_id)
    assert base_lane <= manifests.keys()
    warnings = [r for r in caplog.records if "has no partition 1" in r.getMessage()]
    if partitions == 1:
        assert base_lane <= chunks_on_0
        assert all(m.chunk_partition is None for m in manifests.values())
        assert len(warnings) == 1, "one warning per writer, not one per base"
        return
    assert not warnings and not base_lane & chunks_on_0
    assert {sid for sid, m in manifests.items() if m.chunk_partition == 1} == base_lane
    on_1 = {wire.parse_headers(r.headers) for r in _records(bootstrap, topic, 1)}
    assert {h.snapshot_id for h in on_1 if h is not None and h.kind == "chunk"} == base_lane
