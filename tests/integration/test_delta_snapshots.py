"""Delta snapshots on the real broker: a server following base + deltas matches the trainer bit
for bit, and every chain fault (lost, corrupt, out-of-order delta, late join, base rotated
out) ends with the server on one consistent version."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import SnapshotWatcher
from streamtrain.snapshot import writer as writer_module
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.row_tracker import row_sparse_parameters
from tests.delta_fixtures import SparseTrainer, build_model
from tests.integration.snapshot_harness import wait
from tests.metrics_scrape import Exporter

HASH = "d" * 64
CHUNK = 4096  # several chunks per base, so chunk handling is exercised too


class Chain:
    """A trainer plus a writer whose base and predecessor the test chooses."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.trainer = SparseTrainer()
        self.writer = SnapshotWriter(
            kafka=KafkaConnection(bootstrap),
            topic=topic,
            model_name="emb",
            settings_hash=HASH,
            chunk_bytes=CHUNK,
        )
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def take(self, steps: int = 2) -> SnapshotRequest:
        if self.states:
            self.trainer.train(steps)
        request = self.trainer.request()
        self.states[request.version] = self.trainer.state()
        return request

    def write(
        self, request: SnapshotRequest, base: int | None = None, predecessor: int | None = None
    ) -> str:
        manifest = self.writer.write(
            request,
            base_id=None if base is None else f"run-d/{base}",
            predecessor_id=None if predecessor is None else f"run-d/{predecessor}",
        )
        return manifest.kind


class Server:
    def __init__(self, bootstrap: str, topic: str) -> None:
        model = build_model(seed=99)  # other initial weights: everything must come from Kafka
        self.slot = WeightSlot(model, shared=frozenset(row_sparse_parameters(model)))
        source = SnapshotSubscriber(
            kafka=KafkaConnection(bootstrap), topic=topic, settings_hash=HASH
        )
        self.watcher = SnapshotWatcher(source, self.slot, poll_timeout_s=0.2).start()

    def version(self) -> int | None:
        info = self.slot.info
        return None if info is None else info.version

    def matches(self, state: dict[str, torch.Tensor]) -> bool:
        with self.slot.acquire() as lease:
            served = lease.model.state_dict()
            return all(torch.equal(served[name], tensor) for name, tensor in state.items())

    def live_and_matching(self, states: dict[int, dict[str, torch.Tensor]]) -> int | None:
        """The live version if its weights are ``states``' of that version, else None; read
        under one lease, so a swap between reading the version and the weights cannot pair
        one version's number with another's weights."""
        with self.slot.acquire() as lease:
            version = lease.info.version
            served = lease.model.state_dict()
            state = states.get(version)
            if state is None:
                return None
            same = all(torch.equal(served[name], tensor) for name, tensor in state.items())
            return version if same else None


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: str) -> str:
    create_topics(kafka_bootstrap, [unique_name])
    return unique_name


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.watcher.stop()


def test_publisher_deltas_reach_a_late_server_bit_for_bit(
    kafka_bootstrap: str, topic: str, servers: list[Server]
) -> None:
    trainer = SparseTrainer()
    publisher = SnapshotPublisher(
        kafka=KafkaConnection(kafka_bootstrap),
        topic=topic,
        model_name="emb",
        settings_hash=HASH,
        chunk_bytes=CHUNK,
    )
    try:
        # Each offer is published before the next: an offer the publisher thread has not
        # reached yet is merged into the next (rule 1), so on a loaded machine the base
        # could become version 3, not 0, and the deltas fewer.
        publisher.offer(trainer.request())  # the first snapshot is a base
        assert publisher.flush(120)
        for _ in range(3):
            trainer.train(3)
            request = trainer.request()
            assert request.rows is not None  # deltas between bases
            publisher.offer(request)
            assert publisher.flush(120)
        servers.append(Server(kafka_bootstrap, topic))  # joins late: base + 3 deltas
        server = servers[0]
        wait(lambda: server.version() == trainer.step, "the late server to reach the newest")
        assert server.matches(trainer.state())
        for _ in range(3):  # and follows new deltas as they come
            trainer.train(2)
            publisher.offer(trainer.request())
        wait(lambda: server.version() == trainer.step, "the server to follow the deltas")
        assert server.matches(trainer.state())
        info = server.slot.info
        assert info is not None and info.header.lineage == "run-d/0"
    finally:
        publisher.close(10)


def test_lost_delta_leaves_the_server_on_the_last_linked_version(
    kafka_bootstrap: str, topic: str, servers: list[Server]
) -> None:
    chain = Chain(kafka_bootstrap, topic)
    chain.write(chain.take())  # base 0
    d1 = chain.take()
    chain.write(d1, 0, 0)
    lost = chain.take()  # never written
    d3 = chain.take()
    chain.write(d3, 0, lost.version)
    servers.append(Server(kafka_bootstrap, topic))
    server = servers[0]
    wait(lambda: server.version() == d1.version, "the server on the last linked delta")
    assert server.matches(chain.states[d1.version])
    # The next base repairs it.
    base = chain.take()
    base = SnapshotRequest(**{**base.__dict__, "rows": None, "tensors": chain.trainer.state()})
    chain.write(base)
    wait(lambda: server.version() == base.version, "the server on the new base")
    assert server.matches(chain.states[base.version])


def test_corrupt_delta_is_refused_and_later_deltas_wait_for_a_base(
    kafka_bootstrap: str,
    topic: str,
    servers: list[Server],
    monkeypatch: pytest.MonkeyPatch,
    server_metrics: Exporter,
) -> None:
    def _rejected(reason: str) -> float:
        return server_metrics.value("streamtrain_serve_rejected_snapshots_total", reason=reason)

    chain = Chain(kafka_bootstrap, topic)
    chain.write(chain.take())
    servers.append(Server(kafka_bootstrap, topic))
    server = servers[0]
    d1 = chain.take()
    chain.write(d1, 0, 0)
    wait(lambda: server.version() == d1.version, "the server on delta 1")
    before = {r: _rejected(r) for r in ("checksum", "chain_gap")}
    d2 = chain.take()
    with monkeypatch.context() as patch:
        patch.setattr(writer_module, "sha256_hex", lambda payload: "0" * 64)
        chain.write(d2, 0, d1.version)  # its bytes no longer match its manifest
    d3 = chain.take()
    chain.write(d3, 0, d2.version)
    d4 = chain.take()
    chain.write(d4, 0, d3.version)
    # Both later deltas arrive and are held back: the server stays whole on delta 1.
    wait(
        lambda: (
            _rejected("checksum") > before["checksum"]
            and _rejected("chain_gap") > before["chain_gap"]
        ),
        "the corrupt delta refused and a later delta found not to link",
    )
    info = server.slot.info
    assert info is not None and info.version == d1.version
    assert server.matches(chain.states[d1.version])
    # A server starting now sees the whole broken chain at once and stops at the same place.
    servers.append(Server(kafka_bootstrap, topic))
    late = servers[1]
    wait(lambda: late.version() == d1.version, "the late server on delta 1")
    assert late.matches(chain.states[d1.version])
    assert server.version() == d1.version


def test_out_of_order_deltas_apply_in_chain_order(
    kafka_bootstrap: str, topic: str, servers: list[Server]
) -> None:
    chain = Chain(kafka_bootstrap, topic)
    chain.write(chain.take())
    servers.append(Server(kafka_bootstrap, topic))
    server = servers[0]
    wait(lambda: server.version() == 0, "the server on the base")
    d1 = chain.take()
    d2 = chain.take()
    chain.write(d2, 0, d1.version)  # arrives first: does not follow the live base
    chain.write(d1, 0, 0)
    # Delta 1 applies; delta 2 too if the catch-up read the topic after delta 1 landed.
    wait(lambda: server.version() in (d1.version, d2.version), "delta 1 applied")
    # delta 2, held while it did not follow, may apply right after: version and weights are
    # read under one lease
    assert server.live_and_matching(chain.states) in (d1.version, d2.version)
    d3 = chain.take()
    chain.write(d3, 0, d2.version)  # a gap on the server: catch-up applies d2, then d3
    wait(lambda: server.version() == d3.version, "the chain caught up")
    assert server.matches(chain.states[d3.version])


def test_deltas_of_a_rotated_out_base_wait_for_the_next_base(
    kafka_bootstrap: str, topic: str, servers: list[Server]
) -> None:
    chain = Chain(kafka_bootstrap, topic)
    chain.take()  # base 0: deleted by retention before this server starts (never on topic)
    d1 = chain.take()
    chain.write(d1, 0, 0)
    servers.append(Server(kafka_bootstrap, topic))
    server = servers[0]
    d2 = chain.take()
    chain.write(d2, 0, d1.version)
    base = chain.take()
    base = SnapshotRequest(**{**base.__dict__, "rows": None, "tensors": chain.trainer.state()})
    chain.write(base)
    d4 = chain.take()
    chain.write(d4, base.version, base.version)
    wait(lambda: server.version() == d4.version, "the server on the new lineage")
    assert server.matches(chain.states[d4.version])
    info = server.slot.info
    assert info is not None and info.header.lineage == f"run-d/{base.version}"
