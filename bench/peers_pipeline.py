"""streamtrain through its real pipeline: embedded broker, binary producer, ``build_trainer``.

Per run, in this order:

1. Create fresh samples / dead-letter / snapshot topics (unique names) on the shared broker.
2. Produce the whole stream with :class:`streamtrain.client.SampleProducer` (binary codec) and
   flush, so the trainer then drains a backlog: its time is the trainer's, not the producer's.
3. Build the trainer exactly as ``streamtrain train`` does (:func:`build_trainer`), reading
   from the earliest offset, with ``metric_window`` set to the stream length: the trainer's
   rolling prequential window then spans the whole stream, so ``rolling_score`` *is* the
   whole-stream prequential score (over applied steps; the guard skips none here).
4. ``run()`` until ``max_samples`` (the stream length) have been learned, with
   ``stop_when_idle`` as a safety net; snapshots are published and checkpoints written as in
   production (default policies), so their cost is in the throughput.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from peers_inprocess import ModelConfig, stream_settings, stream_spec
from peers_river import RunResult
from peers_streams import Stream

from streamtrain.builders.trainer import build_trainer
from streamtrain.client import SampleProducer
from streamtrain.config import Settings, load_settings
from streamtrain.kafka import KafkaConnection, create_topics


@dataclass(frozen=True)
class PipelineResult:
    """The trainer's figures plus the producer's rate, for one stream through Kafka."""

    run: RunResult  # trainer: whole-stream prequential accuracy, samples learned per second
    produce_per_second: float
    steps: int


def pipeline_settings(
    bootstrap: str, name: str, config: ModelConfig, stream: Stream, batch_size: int, root: Path
) -> Settings:
    """The in-process run's settings (model, optimizer) plus Kafka, topics and the trainer's."""
    base = stream_settings(config, stream, batch_size)
    return load_settings(
        overrides={
            "model": base.model.model_dump(mode="json"),
            "optimizer": base.optimizer.model_dump(mode="json"),
            "kafka": {"bootstrap_servers": bootstrap},
            "topics": {
                "samples": f"{name}.samples",
                "dead_letter": f"{name}.dlq",
                "snapshots": f"{name}.snapshots",
            },
            "ingest": {
                "group_id": f"{name}.trainer",
                "start_from": "earliest",
                "max_batch_size": batch_size,
            },
            "train": {
                "device": "cpu",
                "seed": base.train.seed,
                "checkpoint_dir": str(root / "checkpoints"),
                "metric_window": stream.size,
                "max_samples": stream.size,
                "stop_when_idle": 10.0,
                "metrics_port": 0,
            },
        }
    )


def run_pipeline(
    bootstrap: str, config: ModelConfig, stream: Stream, batch_size: int
) -> PipelineResult:
    """Produce ``stream`` to a fresh topic and train on it with the real trainer."""
    name = f"peers-{stream.name}-{config.name}-b{batch_size}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="streamtrain-peers-") as tmp:
        settings = pipeline_settings(bootstrap, name, config, stream, batch_size, Path(tmp))
        topics = settings.topics
        create_topics(bootstrap, [topics.samples, topics.dead_letter, topics.snapshots])
        started = time.perf_counter()
        with SampleProducer(
            spec=stream_spec(stream),
            topic=topics.samples,
            kafka=KafkaConnection.from_settings(settings.kafka),
            format="binary",
        ) as producer:
            labels = stream.labels.reshape(-1, 1) if stream.is_regression else stream.labels
            producer.send_many(stream.features, labels)
        produce_seconds = time.perf_counter() - started
        summary = build_trainer(settings).run()
    if summary.samples_seen != stream.size:
        raise RuntimeError(
            f"the trainer learned {summary.samples_seen} of {stream.size} samples of "
            f"{stream.name} ({summary.stop_reason}); see the dead-letter topic {topics.dead_letter}"
        )
    run = RunResult(summary.rolling_score, None, stream.size, summary.elapsed_seconds)
    return PipelineResult(run, stream.size / produce_seconds, summary.steps)
