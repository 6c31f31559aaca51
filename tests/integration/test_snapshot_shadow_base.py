"""Scheduled bases without a copy of the table on the training thread (issue 26): the trainer
copies only the changed rows, the publisher completes the base from its own copy, and what
reaches the topic is exactly the model at that step."""

from __future__ import annotations

import torch

from streamtrain.kafka import KafkaConnection, create_topics
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
