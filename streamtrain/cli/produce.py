"""`streamtrain produce`: write a named sample stream to the samples topic at a steady rate."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import typer

from streamtrain.cli.command import app
from streamtrain.cli.common import (
    CONFIG_OPTION,
    ExitCode,
    fail,
    is_kafka_failure,
    kafka_failure_message,
    settings_from,
    setup_logging,
)
from streamtrain.client import SampleProducer
from streamtrain.datasets import DatasetError, DatasetInfo, SampleChunk, get_dataset, hyperplane
from streamtrain.kafka import KafkaConfigError, KafkaConnection, create_topics
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import SampleError


class Pacer:
    """Token-bucket pacing against a monotonic clock: the n-th sample is due at
    ``start + n / rate``, so sleep error never accumulates into drift. Rate 0 = no pacing.

    >>> now = [0.0]
    >>> pacer = Pacer(rate=100, clock=lambda: now[0])
    >>> pacer.allowed(sent=0), pacer.allowed(sent=1)
    (1, 0)
    >>> now[0] = 0.5
    >>> pacer.allowed(sent=1)
    50
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._start = clock()

    def allowed(self, sent: int) -> int:
        """How many more samples may go now, given ``sent`` so far (one burst at the start)."""
        if self.rate <= 0:
            return 1 << 30
        due = int((self._clock() - self._start) * self.rate) + 1
        return max(0, due - sent)

    def wait_seconds(self, sent: int) -> float:
        """Seconds until sample number ``sent`` is due."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, self._start + sent / self.rate - self._clock())


def _dataset(
    name: str, file: Path | None, spec: SampleSpec, drift_at: int | None, drift_every: int | None
) -> DatasetInfo:
    from streamtrain.datasets import jsonl

    if name == "file":
        if file is None:
            fail("--dataset file needs --file samples.jsonl")
        return jsonl(file, spec)
    if (drift_at is not None or drift_every is not None) and name.startswith("hyperplane"):
        classes = get_dataset(name).spec.num_classes
        return hyperplane(num_classes=classes, drift_at=drift_at, drift_every=drift_every)
    return get_dataset(name)


def _send_paced(producer: SampleProducer, chunks: Iterator[SampleChunk], pacer: Pacer) -> int:
    # Records without a key go to a random partition (both client libraries' default),
    # which spreads samples over every partition of the topic.
    sent = 0
    for chunk in chunks:
        offset = 0
        while offset < len(chunk):
            allowed = pacer.allowed(sent)
            if allowed == 0:
                time.sleep(min(pacer.wait_seconds(sent), 0.05))
                continue
            end = min(len(chunk), offset + allowed)
            part = _slice(chunk, offset, end)
            producer.send_many(
                part.features, part.labels, part.weights, _timestamps(part), sparse=part.sparse
            )
            sent += end - offset
            offset = end
    return sent


def _slice(chunk: SampleChunk, start: int, end: int) -> SampleChunk:
    return SampleChunk(
        chunk.features[start:end],
        chunk.labels[start:end],
        None if chunk.weights is None else chunk.weights[start:end],
        None if chunk.timestamps is None else chunk.timestamps[start:end],
        None if chunk.sparse is None else chunk.sparse[start:end],
    )


def _timestamps(chunk: SampleChunk) -> np.ndarray | None:
    if chunk.timestamps is None or np.isnan(chunk.timestamps).all():
        return None
    # A sample without its own timestamp gets the producer's wall clock.
    return np.where(np.isnan(chunk.timestamps), time.time(), chunk.timestamps)


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM ends production like Ctrl-C: flush what was sent, report it, exit 0.
    raise KeyboardInterrupt


@app.command(short_help="Send a labelled sample stream to the samples topic.")
def produce(
    dataset: str = typer.Option(
        "hyperplane", help="hyperplane, hyperplane-multiclass, digits, ctr or file."
    ),
    rate: float = typer.Option(1000.0, min=0, help="Samples per second; 0 = as fast as possible."),
    count: int = typer.Option(10_000, min=0, help="Samples to send."),
    format: str = typer.Option("json", "--format", help="Wire format: json or binary."),
    file: Path | None = typer.Option(
        None, help="JSON-lines samples for --dataset file.", dir_okay=False
    ),
    topic: str | None = typer.Option(None, help="Samples topic (default topics.samples)."),
    bootstrap_servers: str | None = typer.Option(None, help="Kafka host:port list."),
    config: Path | None = CONFIG_OPTION,
    seed: int = typer.Option(0, help="Random seed of the synthetic stream."),
    partitions: int | None = typer.Option(
        None, min=1, help="Partitions to create the topic with, and to spread samples over."
    ),
    drift_at: int | None = typer.Option(None, min=0, help="hyperplane: sample of the drift."),
    drift_every: int | None = typer.Option(
        None, min=1, help="hyperplane: the concept changes every N samples (recurring drift)."
    ),
    linger_ms: int = typer.Option(
        5, min=0, max=10_000, help="Milliseconds the producer gathers samples into one batch."
    ),
) -> None:
    """Produce COUNT samples of a dataset to the samples topic at RATE samples/s."""
    setup_logging()
    if format not in ("json", "binary"):
        fail(f"--format {format!r} is not supported; use json or binary")
    settings = settings_from(
        config,
        {"topics__samples": "--topic", "topics__sample_partitions": "--partitions"},
        kafka__bootstrap_servers=bootstrap_servers,
        topics__samples=topic,
        topics__sample_partitions=partitions,
    )
    model = settings.model
    file_spec = SampleSpec(
        feature_shape=model.input_shape,
        task=model.task,
        num_classes=model.num_classes,
        target_dim=model.target_dim,
    )
    try:
        info = _dataset(dataset, file, file_spec, drift_at, drift_every)
    except DatasetError as exc:
        fail(str(exc))
    topic_name = settings.topics.samples
    interrupted = False
    n_partitions = settings.topics.sample_partitions
    try:
        kafka = KafkaConnection.from_settings(settings.kafka)
        create_topics(kafka, [topic_name], n_partitions)
        with SampleProducer(
            spec=info.spec,
            topic=topic_name,
            kafka=kafka,
            format="binary" if format == "binary" else "json",
            linger_ms=linger_ms,
        ) as producer:
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                sent = _send_paced(producer, info.iterate(count, seed), Pacer(rate))
            except KeyboardInterrupt:
                sent, interrupted = producer.sent, True
    except (DatasetError, SampleError, KafkaConfigError) as exc:
        fail(str(exc))
    except Exception as exc:  # kafka-python raises many types; all mean "cannot reach Kafka"
        if not (is_kafka_failure(exc) or isinstance(exc, ConnectionError | TimeoutError)):
            raise
        fail(
            kafka_failure_message(settings.kafka.bootstrap_servers, exc),
            ExitCode.KAFKA_UNREACHABLE,
        )
    stopped = " (stopped early)" if interrupted else ""
    typer.echo(f"produced {sent} samples of {info.name} to {topic_name} ({format}){stopped}")
