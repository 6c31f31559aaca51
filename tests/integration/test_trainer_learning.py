"""The trainer learns a drifting stream, survives non-finite steps, and exports its metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from streamtrain.builders.trainer import build_trainer
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import spec_for_model
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.versions import newest_version
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.models import build_model
from tests.integration.trainer_harness import (
    FEATURES,
    hyperplane_stream,
    latest_checkpoint,
    pipeline_settings,
    produce_json,
    read_to_the_end,
    stop_on_the_last,
)
from tests.metrics_scrape import Exporter


def _settings(
    bootstrap: str,
    name: str,
    root: Path,
    max_wait_ms: int = 200,
    params: dict[str, Any] | None = None,
    **train: Any,
) -> Any:
    return pipeline_settings(
        bootstrap,
        name,
        root,
        ingest={"group_id": f"{name}-group", "max_batch_size": 16, "max_wait_ms": max_wait_ms},
        model={
            "name": "linear",
            "input_shape": [FEATURES],
            "num_classes": 2,
            "params": params or {},
        },
        # one optimizer step per fetched batch, so steps and skipped steps count batches
        optimizer={"name": "sgd", "lr": 0.5, "step_samples": "batch"},
        train={"metric_window": 500, **train},
    )


def test_learns_then_recovers_after_concept_drift(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    x, y = hyperplane_stream(6000, seed=11, drift_at=3000)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y)

    before = build_trainer(
        _settings(kafka_bootstrap, unique_name, tmp_path, max_samples=3000)
    ).run()
    # max_samples stops after the batch that reaches it: batches are never split.
    assert 3000 <= before.samples_seen < 3000 + 16
    assert before.rolling_score > 0.85, f"prequential accuracy {before.rolling_score:.3f}"

    after = build_trainer(
        _settings(kafka_bootstrap, unique_name, tmp_path, **stop_on_the_last(6000))
    ).run()
    assert after.resumed_from_step == before.steps
    assert after.samples_seen == 6000, "every sample learned exactly once across the restart"
    read_to_the_end(tmp_path, 6000)
    # The labels flipped at sample 3000: a model that stopped adapting would score near 0.
    assert after.rolling_score > 0.85, f"accuracy after drift {after.rolling_score:.3f}"


def test_non_finite_steps_are_skipped_and_weights_stay_finite(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, trainer_metrics: Exporter
) -> None:
    good_x, good_y = hyperplane_stream(1200, seed=5)
    # Finite but huge: the forward pass overflows, so the loss is not finite. The stream is
    # all on the topic before the trainer starts and every batch is a full 16 (the source
    # waits up to 2 s to fill one), so the huge rows are exactly batches 38 to 42.
    bad_batches, prefix = 5, 16 * 37
    huge = np.full((16 * bad_batches, FEATURES), 3e38, np.float32)
    x = np.concatenate([good_x[:prefix], huge, good_x[prefix:]])
    y = np.concatenate([good_y[:prefix], np.zeros(len(huge), np.int64), good_y[prefix:]])
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y)
    # Without the standardiser. A rejected step puts back the statistics its forward folded in
    # (train/statistics_undo.py; tests/unit/test_learner.py), but the rollback here restores
    # the state before the first step (the last good state is saved every 100 steps), whose
    # statistics are empty: a standardiser with no statistics maps the next huge batch to 0,
    # which is finite, so that batch would be learned. Without it each bad step is exactly one
    # huge batch.
    settings = _settings(
        kafka_bootstrap,
        unique_name,
        tmp_path,
        2000,
        {"standardize": False},
        max_bad_steps=3,
        **stop_on_the_last(len(x)),
    )

    start = trainer_metrics.scrape()
    summary = build_trainer(settings).run()
    end = trainer_metrics.scrape()

    def delta(name: str) -> float:
        return (end.value(name) or 0.0) - (start.value(name) or 0.0)

    assert summary.samples_seen == len(x) and summary.steps == len(x) // 16
    read_to_the_end(tmp_path, len(x))
    # Five bad steps in a row with max_bad_steps=3: skip, skip, rollback (the count starts
    # again), skip, skip. Every bad step is a skipped update, the rollback one included.
    assert delta("streamtrain_train_skipped_updates_total") == bad_batches
    assert delta("streamtrain_train_rollbacks_total") == bad_batches // 3
    assert delta("streamtrain_train_optimizer_updates_total") == summary.steps - bad_batches
    weights = load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())
    assert summary.rolling_score > 0.8, "learning continued after the bad batches"


def test_fresh_run_continues_the_published_version_sequence(
    kafka_bootstrap: str, kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    x, y = hyperplane_stream(320, seed=2)
    produce_json(kafka_bootstrap, f"{unique_name}-samples", x, y)
    settings = _settings(kafka_bootstrap, unique_name, tmp_path, **stop_on_the_last(320))
    snapshots = settings.topics.snapshots
    digest = settings_hash(settings.model.model_dump(mode="json"))
    # An earlier run whose checkpoints are gone published up to version 700.
    model = build_model("linear", spec_for_model(settings.model), settings.model.params)
    writer = SnapshotWriter(
        kafka=kafka_connection,
        topic=snapshots,
        model_name="linear",
        settings_hash=digest,
        chunk_bytes=512 * 1024,
    )
    writer.write(
        SnapshotRequest(
            version=700,
            run_id="lost-run",
            tensors={k: v.detach().clone() for k, v in model.state_dict().items()},
            data_watermark=None,
            offsets={},
            created_at=0.0,
        )
    )
    writer.close(5.0)

    summary = build_trainer(settings).run()

    assert summary.resumed_from_step is None and summary.samples_seen == 320
    read_to_the_end(tmp_path, 320)
    assert summary.steps == 700 + 320 // 16
    assert newest_version(kafka_connection, snapshots, digest) == summary.steps
