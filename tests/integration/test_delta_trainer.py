"""``streamtrain train`` with a row-sparse plugin model publishes bases and deltas, and a
``streamtrain serve`` worker following them ends bit for bit on the trainer's weights."""

from __future__ import annotations

from pathlib import Path

import torch

from streamtrain.builders.server import build_worker
from streamtrain.builders.trainer import build_trainer
from tests.delta_fixtures import FACTORY, model_state, newest_after_one_base, one_base_then_deltas
from tests.integration.snapshot_harness import wait
from tests.integration.trainer_harness import produce_id_samples, read_to_the_end

SAMPLES = 600  # produced, all valid: each is learned exactly once


def test_trainer_deltas_reach_the_server_bit_for_bit(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, examples_on_path: None
) -> None:
    name = unique_name
    settings = one_base_then_deltas(
        kafka_bootstrap,
        name,
        tmp_path,
        model={"name": FACTORY, "params": {"rows": 500, "dim": 8, "id_features": 2}},
        batch_size=8,
        optimizer={"name": "sgd", "lr": 0.05},
        snapshot_every_steps=3,
        samples=SAMPLES,
    )
    produce_id_samples(kafka_bootstrap, f"{name}-samples", SAMPLES, seed=3)

    worker = build_worker(settings)
    worker.start()
    try:
        trainer = build_trainer(settings)
        summary = trainer.run()
        assert summary.samples_seen == SAMPLES, "every produced sample was learned"
        read_to_the_end(tmp_path, SAMPLES)
        expected = model_state(trainer._learner.model)
        # One base on start, then deltas: the server's final weights come from applied deltas.
        newest = newest_after_one_base(settings)

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
