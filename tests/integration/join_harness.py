"""Shared pieces of the join tests: topics, logged predictions, labels, a `streamtrain join`
subprocess, and reading the samples / dead-letter topics back to their true end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtrain.broker import free_port
from streamtrain.kafka import KafkaConnection, create_topics, record_consumer, record_producer
from streamtrain.kafka.watermark import true_ends
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import encode_binary
from streamtrain.wire.label_record import encode_label_json
from streamtrain.wire.prediction_record import PredictionRecord, encode_prediction
from tests.integration.trainer_harness import scrape

FEATURES = 4
SPEC = SampleSpec(feature_shape=(FEATURES,), task="binary")
HEAD = 4 + 8 + 4 + 8  # magic, timestamp, weight, int64 label: what the join may rewrite


@dataclass(frozen=True)
class JoinTopics:
    predictions: str
    labels: str
    samples: str
    dead_letter: str

    @classmethod
    def named(cls, name: str) -> JoinTopics:
        return cls(f"{name}-preds", f"{name}-labels", f"{name}-samples", f"{name}-dlq")


@dataclass(frozen=True)
class Consumed:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def make_topics(kafka: KafkaConnection, topics: JoinTopics, partitions: int) -> None:
    create_topics(kafka, [topics.predictions, topics.labels], partitions)
    create_topics(kafka, [topics.samples, topics.dead_letter], 1)


def new_topics(kafka: KafkaConnection, name: str, partitions: int) -> JoinTopics:
    """A test's own join topics, named after ``name`` and created (inputs with ``partitions``)."""
    topics = JoinTopics.named(name)
    make_topics(kafka, topics, partitions)
    return topics


@dataclass(frozen=True)
class JoinCase:
    """What every join test starts with, made once: its broker connection, topics of its own
    (created) and a state folder, with the harness's calls bound to them."""

    kafka: KafkaConnection
    topics: JoinTopics
    state_dir: Path

    @classmethod
    def create(cls, kafka: KafkaConnection, name: str, root: Path, partitions: int) -> JoinCase:
        """Topics named after ``name`` (inputs with ``partitions``), state under ``root``."""
        return cls(kafka, new_topics(kafka, name, partitions), root / "state")

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A join's environment (:func:`join_env`); each call has a metrics port of its own."""
        return join_env(self.kafka, self.topics, self.state_dir, extra)

    def predictions(self, ids: list[str], served_at: float) -> dict[str, bytes]:
        return produce_predictions(self.kafka, self.topics.predictions, ids, served_at)

    def labels(
        self,
        labels: Mapping[str, object],
        raw: Mapping[str, bytes] | None = None,
        paced: Callable[[int], None] | None = None,
    ) -> None:
        produce_labels(self.kafka, self.topics.labels, labels, raw, paced)

    def samples(self, at_least: int, timeout: float) -> list[Consumed]:
        return wait_for_records(self.kafka, self.topics.samples, at_least, timeout)

    def dead_letters(self, at_least: int, timeout: float) -> list[Consumed]:
        return wait_for_records(self.kafka, self.topics.dead_letter, at_least, timeout)


def served_sample(i: int, served_at: float) -> bytes:
    """The binary sample a server would log for request ``i`` (label placeholder 0)."""
    rng = np.random.default_rng(i)
    features = rng.normal(size=FEATURES).astype(np.float32)
    return encode_binary(SPEC, features, 0, timestamp=served_at)


def produce_predictions(
    kafka: KafkaConnection, topic: str, ids: list[str], served_at: float
) -> dict[str, bytes]:
    """Log one prediction per id (keyed by it, so the default partitioner places it);
    returns id -> served sample."""
    producer = record_producer(kafka, linger_ms=5)
    served: dict[str, bytes] = {}
    for rid in ids:
        sample = served_sample(int(rid.rsplit("-", 1)[1]), served_at)
        record = PredictionRecord(rid, served_at, 1, "run", (0.3, 0.7), sample)
        producer.send(topic, encode_prediction(record), key=rid.encode())
        served[rid] = sample
    producer.flush(60)
    producer.close(10)
    return served


def produce_labels(
    kafka: KafkaConnection,
    topic: str,
    labels: Mapping[str, object],
    raw: Mapping[str, bytes] | None = None,
    paced: Callable[[int], None] | None = None,
) -> None:
    """JSON labels keyed by id; ``raw`` sends values as they are (invalid labels);
    ``paced(i)`` runs before the i-th record (to spread a stream over time)."""
    producer = record_producer(kafka, linger_ms=5)
    for i, (rid, label) in enumerate(labels.items()):
        if paced is not None:
            paced(i)
        producer.send(topic, encode_label_json(rid, label), key=rid.encode())
    for rid, value in (raw or {}).items():
        producer.send(topic, value, key=rid.encode())
    producer.flush(60)
    producer.close(10)


def read_topic(kafka: KafkaConnection, topic: str, timeout: float = 60.0) -> list[Consumed]:
    """Every record of ``topic`` up to its true end now, in partition/offset order."""
    consumer = record_consumer(kafka, topic=topic)
    try:
        partitions = consumer.partitions_of_topic()
        consumer.assign(partitions)
        deadline = time.monotonic() + timeout
        ends = true_ends(consumer, partitions, deadline)
        assert ends is not None, f"no fetch response from {topic}"
        consumer.seek_to_beginning(partitions)
        out: list[Consumed] = []
        while any(consumer.position(p) < ends[p] for p in partitions):
            assert time.monotonic() < deadline, f"reading {topic} to {ends} timed out"
            for r in consumer.poll(100, 10_000):
                if r.offset < ends[r.partition]:
                    headers = {k: bytes(v or b"") for k, v in r.headers or ()}
                    out.append(Consumed(r.partition, r.offset, r.key, r.value, headers))
        return sorted(out, key=lambda c: (c.partition, c.offset))
    finally:
        consumer.close()


def wait_for_records(
    kafka: KafkaConnection, topic: str, at_least: int, timeout: float
) -> list[Consumed]:
    deadline = time.monotonic() + timeout
    while True:
        found = read_topic(kafka, topic)
        if len(found) >= at_least:
            return found
        assert time.monotonic() < deadline, f"{topic}: {len(found)} records, expected {at_least}"
        time.sleep(0.2)  # poll interval of a condition wait, not a synchronisation


def join_env(
    kafka: KafkaConnection,
    topics: JoinTopics,
    state_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {
        **os.environ,
        "STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "STREAMTRAIN_TOPICS__PREDICTIONS": topics.predictions,
        "STREAMTRAIN_TOPICS__LABELS": topics.labels,
        "STREAMTRAIN_TOPICS__SAMPLES": topics.samples,
        "STREAMTRAIN_TOPICS__LABELS_DEAD_LETTER": topics.dead_letter,
        "STREAMTRAIN_MODEL__TASK": "binary",
        "STREAMTRAIN_MODEL__INPUT_SHAPE": f"[{FEATURES}]",
        "STREAMTRAIN_JOIN__STATE_DIR": str(state_dir),
        "STREAMTRAIN_JOIN__GROUP_ID": f"{topics.predictions}-join",
        "STREAMTRAIN_JOIN__SESSION_TIMEOUT_MS": "2000",
        "STREAMTRAIN_JOIN__METRICS_PORT": str(free_port()),
    }
    env.update(extra or {})
    return env


def start_join(env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamtrain.cli", "join", "--no-create-missing-topics"],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@dataclass
class JoinRun:
    process: subprocess.Popen[str]
    output: str = ""  # all it wrote, once the ``with`` block has ended


@contextmanager
def joining(env: Mapping[str, str]) -> Iterator[JoinRun]:
    """A `streamtrain join` for the ``with`` block, then SIGTERM (which checkpoints); it must
    exit 0 when the block ended without an error."""
    run = JoinRun(start_join(env))
    try:
        yield run
    finally:
        code, run.output = stop_join(run.process)
    assert code == 0, run.output


def metrics_url(env: Mapping[str, str]) -> str:
    return f"http://127.0.0.1:{env['STREAMTRAIN_JOIN__METRICS_PORT']}/metrics"


def stop_join(process: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM; the exit code and output."""
    process.terminate()
    output, _ = process.communicate(timeout=60)
    return process.returncode, output


def join_metric(url: str, name: str, above: float, timeout: float) -> dict[str, float]:
    """Scrape until ``name`` exceeds ``above`` (the server may not be up yet); the scrape."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = scrape(url)
        except OSError:  # not listening yet
            found = {}
        if found.get(name, float("-inf")) > above:
            return found
        assert time.monotonic() < deadline, f"{name} stayed at {found.get(name)} for {timeout} s"
        time.sleep(0.1)  # poll interval of a condition wait


def by_id(records: list[Consumed]) -> dict[str, list[Consumed]]:
    found: dict[str, list[Consumed]] = {}
    for record in records:
        assert record.key is not None
        found.setdefault(record.key.decode(), []).append(record)
    return found


def kill_join(process: subprocess.Popen[str]) -> str:
    """``kill -9``; what it wrote."""
    process.kill()
    return process.communicate(timeout=120)[0]


def reap(processes: Iterable[subprocess.Popen[str] | None], outputs: list[str]) -> None:
    """Kill (-9) whichever of ``processes`` still runs, keep its output in ``outputs`` and
    print them all (pytest shows it when the test fails): a join test's ``finally``."""
    for process in processes:
        if process is not None and process.returncode is None:
            outputs.append(kill_join(process))
    print("\n=====\n".join(outputs))


def wait_all_joined(kafka: KafkaConnection, topic: str, count: int, timeout: float) -> None:
    """Until ``topic`` holds samples of ``count`` distinct ids."""
    deadline = time.monotonic() + timeout
    while len(by_id(read_topic(kafka, topic))) < count:
        assert time.monotonic() < deadline, "not every id was joined"
        time.sleep(0.2)  # poll interval of a condition wait


def joined_once(kafka: KafkaConnection, topic: str, ids: Iterable[str]) -> dict[str, Consumed]:
    """The samples on ``topic``, one per id: asserts that they are exactly ``ids``, each once."""
    samples = by_id(read_topic(kafka, topic))
    assert sorted(samples) == sorted(ids)
    repeated = {rid: len(found) for rid, found in samples.items() if len(found) != 1}
    assert not repeated, f"ids emitted more than once: {list(repeated.items())[:5]}"
    return {rid: found[0] for rid, found in samples.items()}
