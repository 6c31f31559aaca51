"""A whole snapshot copied off the training thread (issue 26), on the real broker.

The trainer's first snapshot is a whole one. Its table is copied by the copy thread
(``train/snapshot_copy.py``), held here part-way by a gate, while the trainer goes on
training and offering deltas. What reaches the topic is exactly the model at the snapshot's
step, bit for bit (the trainer recorded it there), and a server that follows the topic ends
bit-identical to the trainer.
"""

from __future__ import annotations

import pytest
import torch

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import SnapshotWatcher
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.train.row_tracker import row_sparse_parameters
from streamtrain.train.snapshot_copy import SnapshotCopier
from tests.copy_gate import copy_gate
from tests.delta_fixtures import (
    SparseTrainer,
    build_model,
    published_snapshots,
    sparse_publisher,
    tracked_request,
)
from tests.integration.snapshot_harness import wait

HASH = "c" * 64


def test_a_whole_snapshot_copied_while_training_goes_on_is_the_model_at_its_step(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = KafkaConnection(kafka_bootstrap)
    create_topics(kafka, [unique_name])
    trainer = SparseTrainer()
    # every tensor in the background, the 500-row table in 64 chunks
    copier = SnapshotCopier(trainer.model, trainer.optimizer, chunk_bytes=256, min_bytes=0)
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=4096)
    with copy_gate(monkeypatch) as (held, release):
        trainer.train(3)
        at_base = trainer.state()
        first = tracked_request(trainer, "run", copier)
        assert first.rows is None  # the first snapshot of a process is whole
        publisher.offer(first)
        assert held.wait(30), "the copy thread never reached the table"
        # taken by the publisher's thread (which waits for the copy) before the deltas come:
        # an offer while it is still queued merges into it, a base at the delta's version
        wait(lambda: publisher.backlog() == "none", "the publisher to take the whole snapshot")
        for _ in range(3):  # deltas offered while the base's table is only partly copied
            trainer.train(4)
            publisher.offer(tracked_request(trainer, "run", copier))
        # the steps changed the table after the snapshot: the copy cannot be a late read
        assert not torch.equal(trainer.model.table.weight, at_base["table.weight"])
        release.set()
        assert publisher.flush(60)
    publisher.close(10)
    copier.close()

    published = published_snapshots(kafka, unique_name, HASH)
    bases = [s for s in published if s.manifest.kind == "base"]
    assert [s.manifest.version for s in bases] == [3]
    assert set(bases[0].tensors) == set(at_base)
    for name, tensor in at_base.items():
        assert torch.equal(bases[0].tensors[name], tensor), name
    assert published[0].manifest.kind == "delta"
    assert published[0].manifest.version == trainer.step

    model = build_model(seed=7)
    slot = WeightSlot(model, shared=frozenset(row_sparse_parameters(model)))
    source = SnapshotSubscriber(kafka=kafka, topic=unique_name, settings_hash=HASH)
    watcher = SnapshotWatcher(source, slot, poll_timeout_s=0.1).start()
    try:
        wait(lambda: slot.info is not None and slot.info.version == trainer.step, "the server")
        final = trainer.state()
        with slot.acquire() as lease:
            held_state = lease.model.state_dict()
            for name, tensor in final.items():
                assert torch.equal(held_state[name], tensor), name
    finally:
        watcher.stop()
