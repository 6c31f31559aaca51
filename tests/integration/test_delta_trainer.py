"""``streamtrain train`` with a row-sparse plugin model publishes bases and deltas, and a
``streamtrain serve`` worker following them ends bit for bit on the trainer's weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from kafka import KafkaProducer

from streamtrain.cli.build_trainer import build_trainer
from streamtrain.config import load_settings
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.serve.server import build_worker
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from tests.delta_fixtures import FACTORY
from tests.integration.snapshot_harness import wait


def test_trainer_deltas_reach_the_server_bit_for_bit(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    name = unique_name
    create_topics(kafka_bootstrap, [f"{name}-samples", f"{name}-dlq", f"{name}-snapshots"])
    settings = load_settings(
        overrides={
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "topics": {
                "samples": f"{name}-samples",
                "dead_letter": f"{name}-dlq",
                "snapshots": f"{name}-snapshots",
            },
            "ingest": {"group_id": name, "max_batch_size": 8, "max_wait_ms": 20},
            "model": {
                "name": FACTORY,
                "task": "binary",
                "input_shape": [4],
                "params": {"rows": 500, "dim": 8, "id_features": 2},
            },
            "optimizer": {"name": "sgd", "lr": 0.05},
            "train": {
                "checkpoint_dir": tmp_path,
                "snapshot_every_steps": 3,
                "snapshot_every_seconds": 0.05,
                "base_every_deltas": 1000,  # one base, then only deltas
                "stop_when_idle": 2.0,
                "torch_threads": 1,
            },
            "serve": {"port": 0, "model_name": "m", "retain_versions": 1},
        }
    )
    rng = np.random.default_rng(3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    for i in range(600):
        ids = rng.zipf(1.5, size=2) % 500
        features = [float(ids[0]), float(ids[1]), *rng.normal(size=2).tolist()]
        body = {"features": features, "label": int(ids[0] % 2), "timestamp": 1.7e9 + i}
        producer.send(f"{name}-samples", json.dumps(body).encode())
    producer.flush()
    producer.close()

    worker = build_worker(settings)
    worker.start()
    try:
        trainer = build_trainer(settings)
        summary = trainer.run()
        assert summary.steps > 20
        expected = {k: v.detach().clone() for k, v in trainer._learner.model.state_dict().items()}
        subscriber = SnapshotSubscriber(
            kafka=KafkaConnection(kafka_bootstrap),
            topic=f"{name}-snapshots",
            settings_hash=settings_hash(settings.model.model_dump(mode="json")),
        )
        try:
            published = list(subscriber.newest_first(30.0))
        finally:
            subscriber.close()
        kinds = [s.manifest.kind for s in published]
        # One base on start, then deltas: the server's final weights come from applied deltas.
        assert kinds[0] == "delta" and kinds.count("base") == 1 and len(kinds) > 3, kinds
        newest = published[0].manifest.version

        def live_version() -> int | None:
            info = worker.slot.info
            return None if info is None else info.version

        wait(lambda: live_version() == newest, f"the server on version {newest}")
        with worker.slot.acquire() as lease:
            served = lease.model.state_dict()
            for key, tensor in expected.items():
                assert torch.equal(served[key], tensor), key
    finally:
        worker.stop()
