"""`streamtrain produce`: write a named sample stream to the samples topic at a steady rate."""

from __future__ import annotations

import signal
import threading
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
from streamtrain.config import Settings
from streamtrain.datasets import DatasetError, DatasetInfo, SampleChunk, get_dataset, hyperplane
from streamtrain.kafka import KafkaConfigError, KafkaConnection, create_topics
from streamtrain.kafka.producer import ProduceTimeout
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import SampleError

# At SIGTERM or Ctrl-C: the send in progress may take this long to end (one slice of a chunk;
# longer only when the client blocks on an unreachable broker), and the records sent so far
# this long to be acknowledged, so a stop is prompt even with the broker gone.
STOP_JOIN_S = 2.0
STOP_FLUSH_S = 5.0


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


def _send_paced(
    producer: SampleProducer, chunks: Iterator[SampleChunk], pacer: Pacer, stop: threading.Event
) -> int:
    """Send until the chunks end or ``stop`` is set; ``stop`` is read between two sends only,
    so every record the client took is counted (``producer.sent``) whenever the loop ends."""
    # Records without a key go to a random partition (both client libraries' default),
    # which spreads samples over every partition of the topic.
    sent = 0
    for chunk in chunks:
        offset = 0
        while offset < len(chunk):
            if stop.is_set():
                return sent
            allowed = pacer.allowed(sent)
            if allowed == 0:
                stop.wait(min(pacer.wait_seconds(sent), 0.05))
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


class _Production:
    """The send loop on a thread of its own, stopped by SIGTERM or SIGINT between two sends.

    The signal handlers only set a flag: an exception raised from a handler (Python's default
    ``KeyboardInterrupt``) can land after the client took a record and before it is counted,
    and that record is flushed on exit but missing from the report. The main thread only waits,
    so a send blocked in the client (a full queue, metadata of an unreachable broker) cannot
    hold the stop: after ``STOP_JOIN_S`` the loop is left behind and the flush decides.
    """

    def __init__(
        self, producer: SampleProducer, chunks: Iterator[SampleChunk], pacer: Pacer
    ) -> None:
        self.stop = threading.Event()
        self.signalled = False
        self.error: BaseException | None = None
        self._loop = threading.Thread(
            target=self._run, args=(producer, chunks, pacer), name="produce", daemon=True
        )

    def _run(self, producer: SampleProducer, chunks: Iterator[SampleChunk], pacer: Pacer) -> None:
        try:
            _send_paced(producer, chunks, pacer, self.stop)
        except BaseException as exc:  # handed to the main thread, which reports it
            self.error = exc
        finally:
            self.stop.set()

    def _signal(self, signum: int, frame: object) -> None:
        self.signalled = True
        self.stop.set()

    def run(self) -> bool:
        """Send until the count is reached or a stop signal came; True when the loop ended
        (it always does unless a send was blocked in the client at the signal)."""
        previous = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._loop.start()
            self.stop.wait()
            self._loop.join(STOP_JOIN_S)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.error is not None:
            raise self.error
        return not self._loop.is_alive()


def _produce(
    settings: Settings,
    info: DatasetInfo,
    format: str,
    linger_ms: int,
    count: int,
    seed: int,
    rate: float,
) -> tuple[SampleProducer, _Production]:
    """Create the topic, send until the count or a stop signal, flush: the report's count is
    then exactly the records on the topic (a flush that fails raises instead)."""
    topic_name = settings.topics.samples
    kafka = KafkaConnection.from_settings(settings.kafka)
    create_topics(kafka, [topic_name], settings.topics.sample_partitions)
    producer = SampleProducer(
        spec=info.spec,
        topic=topic_name,
        kafka=kafka,
        format="binary" if format == "binary" else "json",
        linger_ms=linger_ms,
    )
    production = _Production(producer, info.iterate(count, seed), Pacer(rate))
    try:
        ended = production.run()
    except BaseException:
        producer.close(timeout=STOP_FLUSH_S)  # what was sent before the error, bounded
        raise
    try:
        producer.flush(STOP_FLUSH_S if production.signalled else 60.0)
        if not ended:  # blocked in the client since the signal, yet every record flushed
            raise ProduceTimeout(f"the client took no record for {STOP_JOIN_S:.0f} s")
    finally:
        producer.close(timeout=0)  # the flush above settled every record, or gave up
    return producer, production


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
    try:
        producer, production = _produce(settings, info, format, linger_ms, count, seed, rate)
    except (DatasetError, SampleError, KafkaConfigError) as exc:
        fail(str(exc))
    except Exception as exc:  # kafka-python raises many types; all mean "cannot reach Kafka"
        if not (is_kafka_failure(exc) or isinstance(exc, ConnectionError | TimeoutError)):
            raise
        fail(
            kafka_failure_message(settings.kafka.bootstrap_servers, exc),
            ExitCode.KAFKA_UNREACHABLE,
        )
    stopped = " (stopped early)" if production.signalled else ""
    topic_name = settings.topics.samples
    typer.echo(
        f"produced {producer.sent} samples of {info.name} to {topic_name} ({format}){stopped}"
    )
