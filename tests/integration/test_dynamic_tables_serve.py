"""Dynamic tables through snapshots on the real broker: a server following the trainer's base
and deltas, a server that joins late, and a server that lost a delta all end bit for bit on the
trainer's state, mapping buffers and served lookups included (deltas carry mapping changes
beside the rows, applied in one swap)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from kafka import KafkaProducer

from streamtrain.builders.server import build_slot, build_worker
from streamtrain.builders.trainer import build_trainer
from streamtrain.config import ModelSettings, SparseFeatureSettings
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import SnapshotWatcher
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.row_tracker import RowTracker
from tests.delta_fixtures import (
    CTR_SPARSE,
    model_state,
    newest_after_one_base,
    one_base_then_deltas,
    snapshot_request,
)
from tests.integration.snapshot_harness import wait
from tests.integration.test_dynamic_tables_trainer import PARAMS, ctr_samples
from tests.integration.trainer_harness import read_to_the_end
from tests.unit.test_dynamic_tables import PARAMS as SMALL_PARAMS
from tests.unit.test_dynamic_tables import _batches, _learner

SAMPLES = 3000  # produced, all valid: each is learned exactly once


def _matches(slot: WeightSlot, state: dict[str, torch.Tensor]) -> bool:
    with slot.acquire() as lease:
        served = lease.model.state_dict()
        return served.keys() == state.keys() and all(
            torch.equal(served[name], tensor) for name, tensor in state.items()
        )


def test_following_and_late_servers_end_on_the_trainers_mapping(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    name = unique_name
    settings = one_base_then_deltas(
        kafka_bootstrap,
        name,
        tmp_path,
        model={"name": "dlrm", "sparse": CTR_SPARSE, "params": PARAMS},
        batch_size=32,
        optimizer={"name": "adagrad", "lr": 0.05},
        snapshot_every_steps=5,
        samples=SAMPLES,
    )
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    for sample in ctr_samples()[:SAMPLES]:
        producer.send(f"{name}-samples", json.dumps(sample).encode())
    producer.flush()
    producer.close()

    following = build_worker(settings)
    following.start()
    late = None
    try:
        trainer = build_trainer(settings)
        summary = trainer.run()
        assert summary.samples_seen == SAMPLES, "every produced sample was learned"
        read_to_the_end(tmp_path, SAMPLES)
        expected = model_state(trainer._learner.model)
        assert int(expected["embeddings.mappings.t_items.step"]) == summary.steps
        newest = newest_after_one_base(settings)
        late = build_worker(settings)  # joins after the trainer: the base, then every delta
        late.start()
        for worker in (following, late):
            wait(
                lambda w=worker: w.slot.info is not None and w.slot.info.version == newest,
                f"a server on version {newest}",
            )
            assert _matches(worker.slot, expected)
    finally:
        following.stop()
        if late is not None:
            late.stop()


HASH = "e" * 64


class DynamicChain:
    """A dlrm with a dynamic table learning step by step, and a writer whose chain the test
    chooses (so it can lose a delta)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.learner = _learner()
        self.tracker = RowTracker(
            self.learner.model,
            self.learner.optimizer,
            base_every_deltas=1000,
            base_every_seconds=1e9,
        )
        self.batches = iter(_batches(60))
        self.step = 0
        self.writer = SnapshotWriter(
            kafka=KafkaConnection(bootstrap),
            topic=topic,
            model_name="dyn",
            settings_hash=HASH,
            chunk_bytes=1 << 16,
        )
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    @classmethod
    def begun(cls, bootstrap: str, topic: str) -> tuple[DynamicChain, SnapshotRequest]:
        """A chain on ``topic`` (created here) that wrote a base at step 0 and one delta after
        it; the chain and that delta."""
        create_topics(bootstrap, [topic])
        chain = cls(bootstrap, topic)
        chain.write(chain.take())  # base at step 0
        first = chain.take()
        chain.write(first, 0, 0)
        return chain, first

    def repair(self, slot: WeightSlot) -> None:
        """Write a new base and wait for ``slot`` to serve it: its state, bit for bit."""
        base = self.take(base=True)
        self.write(base)
        wait(lambda: slot.info is not None and slot.info.version == base.version, "the new base")
        assert _matches(slot, self.states[base.version])

    def take(self, steps: int = 4, base: bool = False) -> SnapshotRequest:
        for _ in range(steps if self.states else 0):
            x, y, w, sparse = next(self.batches)
            self.learner.learn(x, y, w, sparse)
            self.step += 1
        rows = self.tracker.take()
        self.states[self.step] = model_state(self.learner.model)
        return snapshot_request(self.learner.model, self.step, "run-e", None if base else rows)

    def write(
        self, request: SnapshotRequest, base: int | None = None, after: int | None = None
    ) -> None:
        self.writer.write(
            request,
            base_id=None if base is None else f"run-e/{base}",
            predecessor_id=None if after is None else f"run-e/{after}",
        )


def watch_chain(bootstrap: str, topic: str) -> tuple[WeightSlot, SnapshotWatcher]:
    """A server's slot for :class:`DynamicChain`'s dlrm, and a started watcher that fills it
    from ``topic`` (the caller stops it)."""
    model = ModelSettings(
        name="dlrm",
        task="binary",
        input_shape=(3,),
        sparse=(
            SparseFeatureSettings(name="user", table="users", max_length=2),
            SparseFeatureSettings(name="items", table="items", max_length=4),
        ),
        params=SMALL_PARAMS,
    )
    slot = build_slot(model, torch.device("cpu"))
    source = SnapshotSubscriber(kafka=KafkaConnection(bootstrap), topic=topic, settings_hash=HASH)
    return slot, SnapshotWatcher(source, slot, poll_timeout_s=0.2).start()


def test_a_server_that_lost_a_delta_holds_a_linked_version_then_repairs_from_a_base(
    kafka_bootstrap: str, unique_name: str
) -> None:
    chain, d1 = DynamicChain.begun(kafka_bootstrap, unique_name)
    lost = chain.take()  # admissions and evictions in it are never published
    d3 = chain.take()
    chain.write(d3, 0, lost.version)
    slot, watcher = watch_chain(kafka_bootstrap, unique_name)
    try:
        wait(
            lambda: slot.info is not None and slot.info.version == d1.version,
            "the last linked delta",
        )
        assert _matches(slot, chain.states[d1.version])
        assert not torch.equal(
            chain.states[d1.version]["embeddings.mappings.t_items.slot_ids"],
            chain.states[d3.version]["embeddings.mappings.t_items.slot_ids"],
        ), "the lost delta changed the mapping"
        chain.repair(slot)
    finally:
        watcher.stop()
