"""Issue 26, "measure the training-thread stall per snapshot and export it": a real trainer of
a row-sparse model publishing deltas and scheduled bases exports one
``streamtrain_snapshot_stall_seconds`` observation for every snapshot it published (more when
a snapshot was superseded before its publish), on its real /metrics. How long the stalls are is
the bench's to say (bench/delta.py: max and p99 per run), not a test's."""

from __future__ import annotations

from pathlib import Path

from streamtrain import health, metrics
from streamtrain.builders.trainer import build_trainer
from streamtrain.kafka import KafkaConnection
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from tests.delta_fixtures import FACTORY
from tests.integration.trainer_harness import (
    pipeline_settings,
    produce_id_samples,
    read_to_the_end,
    scrape,
    stop_on_the_last,
)

SAMPLES = 600
STALL = "streamtrain_snapshot_stall_seconds"


def test_every_published_snapshot_has_its_stall_on_the_trainers_metrics(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, examples_on_path: None
) -> None:
    settings = pipeline_settings(
        kafka_bootstrap,
        unique_name,
        tmp_path,
        model={
            "name": FACTORY,
            "task": "binary",
            "input_shape": [4],
            "params": {"rows": 500, "dim": 8, "id_features": 2},
        },
        ingest={"group_id": unique_name, "max_batch_size": 8, "max_wait_ms": 20},
        optimizer={"name": "sgd", "lr": 0.05},
        train={
            "snapshot_every_steps": 3,
            "snapshot_every_seconds": 0.05,
            "base_every_deltas": 4,  # scheduled bases (the base lane) between the deltas
            **stop_on_the_last(SAMPLES),
            "torch_threads": 1,
        },
        create=("samples", "dlq", "snapshots"),
    )
    produce_id_samples(kafka_bootstrap, f"{unique_name}-samples", SAMPLES, seed=5)

    server = metrics.serve_metrics(
        metrics.TRAINER_REGISTRY, 0, host="127.0.0.1", routes=health.routes()
    )
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        before = scrape(url)  # this process's registry: earlier tests counted into it too
        summary = build_trainer(settings).run()  # returns on the last sample, publisher closed
        after = scrape(url)
    finally:
        server.shutdown()
    assert summary.samples_seen == SAMPLES
    read_to_the_end(tmp_path, SAMPLES)

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    subscriber = SnapshotSubscriber(
        kafka=KafkaConnection(kafka_bootstrap),
        topic=settings.topics.snapshots,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
    )
    try:
        kinds = [s.manifest.kind for s in subscriber.newest_first(120.0)]
    finally:
        subscriber.close()
    assert kinds.count("base") >= 2 and kinds.count("delta") >= 2, kinds
    published = moved("streamtrain_snapshot_published_total")
    # at least one per version the topic lists: under load one run counted 29 published for
    # 28 listed, before the lanes shared a lock over partition 0 (a base manifest written
    # inside a delta's span was passed over by the scan: test_snapshot_lane_spans.py)
    assert published >= len(kinds), (published, kinds)
    stalls = moved(f"{STALL}_count")
    assert stalls >= published, (stalls, published)
    assert moved(f"{STALL}_sum") > 0
    assert moved(f'{STALL}_bucket{{le="+Inf"}}') == stalls  # a well-formed histogram
