"""Scheduled bases without a copy of the table on the training thread (issue 26): the trainer
copies only the changed rows, the publisher completes the base from its own copy, and what
reaches the topic is exactly the model at that step; that copy is made on the base lane's
thread, so deltas are published while it is still unfinished (``snapshot/shadow.py`` rule 4)."""

from __future__ import annotations

import pytest
import torch

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.snapshot.shadow import ShadowCopy
from tests.copy_gate import copy_gate
from tests.delta_fixtures import (
    PARAMS,
    SparseTrainer,
    published_snapshots,
    sparse_publisher,
    tracked_request,
)

HASH = "e" * 64


def test_a_scheduled_base_is_the_model_at_its_step_from_rows_only(
    kafka_bootstrap: str, unique_name: str
) -> None:
    kafka = KafkaConnection(kafka_bootstrap)
    create_topics(kafka, [unique_name])
    trainer = SparseTrainer(base_every_deltas=2)  # base, delta, delta, base, ...
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=4096)
    states: dict[int, dict[str, torch.Tensor]] = {}
    copied_rows: list[int] = []
    table = "table.weight"
    for _ in range(7):
        trainer.train(3)
        request = tracked_request(trainer, "run")
        copied_rows.append(request.tensors[table].shape[0])
        states[trainer.step] = trainer.state()
        publisher.offer(request)
        assert publisher.flush(30)
    publisher.close(10)
    # Only the first snapshot copied the whole table on the training thread.
    assert copied_rows[0] == PARAMS["rows"]
    assert max(copied_rows[1:]) < PARAMS["rows"], copied_rows

    published = published_snapshots(kafka, unique_name, HASH)
    bases = [s for s in published if s.manifest.kind == "base"]
    assert sorted(s.manifest.version for s in bases) == [3, 12, 21]
    for base in bases:
        expected = states[base.manifest.version]
        assert set(base.tensors) == set(expected)
        for name, tensor in expected.items():
            assert torch.equal(base.tensors[name], tensor), (base.manifest.version, name)


def test_deltas_are_published_while_the_base_lane_copies_the_shadow(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = KafkaConnection(kafka_bootstrap)
    create_topics(kafka, [unique_name])
    trainer = SparseTrainer(base_every_deltas=2)  # base, delta, delta, base, ...
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=4096)
    # The table copied in chunks of 32 rows (the default copies a 16 KB table at once).
    publisher._shadow = ShadowCopy(chunk_bytes=32 * 8 * 4, min_bytes=0)
    states: dict[int, dict[str, torch.Tensor]] = {}

    def offer() -> None:
        trainer.train(3)
        states[trainer.step] = trainer.state()
        publisher.offer(tracked_request(trainer, "run"))

    for _ in range(3):  # the first whole snapshot and two deltas: the next is a base
        offer()
        assert publisher.flush(30)
    with copy_gate(monkeypatch, thread="snapshot-base-lane") as (held, release):
        offer()  # the scheduled base: its copy stops after its first chunk
        assert held.wait(60), "the base lane never began copying the shadow"
        base_version = trainer.step
        during = []
        for _ in range(3):  # deltas folded into the shadow rows the copy has not reached
            offer()
            assert publisher._worker.flush(30), "a delta waited for the base's copy"
            during.append(trainer.step)
        release.set()
    assert publisher.flush(30)
    publisher.close(10)

    published = {s.manifest.version: s for s in published_snapshots(kafka, unique_name, HASH)}
    assert published[base_version].manifest.kind == "base"
    for version in during:
        assert published[version].manifest.kind == "delta", version
    for name, tensor in states[base_version].items():  # the base is the model at its step
        assert torch.equal(published[base_version].tensors[name], tensor), name
