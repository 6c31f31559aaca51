"""Delayed labels add no skew: the same stream, trained from pre-joined samples and through
the prediction log, labels sent later and the real ``streamtrain join``.

Run: ``.venv/bin/python bench/delayed_labels.py [--samples 20000] [--rate 1000] [--seed 0]``

One embedded broker, one stream (hyperplane, 16 features, 2 classes, a recurring drift), in
this order:

1. every sample is "served" at ``t0 + i / rate``: a prediction-log record
   (:func:`encode_prediction`) whose embedded sample is the row as a server logs it (binary
   layout v1, label zero, weight 1, timestamp = served_at), keyed by its request id; its label
   follows ``U(delay_min, delay_max)`` seconds later (JSON label, keyed by the same id, the
   record stamped with the label's time). Both topics are written in event-time order;
2. the real join (``python -m streamtrain.cli join``, a subprocess, default policies) joins
   them, twice: *live* (the join runs while the stream is played in real time, so it emits
   in label-arrival order, as in production) and *backlog* (the whole stream, an hour old, is
   in the topics before the join starts: a join catching up after downtime);
3. every joined record is compared byte for byte with the sample a producer that knew the
   label would have sent (the served bytes with label, weight 1 and the label's timestamp),
   and its feature bytes with the pre-joined sample's; the order it came in is compared with
   serving order and label order;
4. the real trainer (``build_trainer``, as ``streamtrain train`` builds it; same model, seed
   and batch size, ``metric_window`` = the stream) learns from each topic on its own:
   pre-joined samples in serving order (labels known at once: the no-delay ideal), pre-joined
   samples in label order (what an exact hand-built join emits), and each join's output.
   The whole-stream prequential accuracy of each is printed, with the differences, and the
   noise floor: serving order again with only the model's seed changed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.builders.trainer import build_trainer
from streamtrain.config import load_settings
from streamtrain.datasets import hyperplane
from streamtrain.demo.scrape import Scrape, ScrapeError, scrape
from streamtrain.kafka import create_topics
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import CONTENT_TYPE_HEADER, encode_binary, encode_binary_many
from streamtrain.wire.content_type import BINARY_CONTENT_TYPE
from streamtrain.wire.label_record import encode_label_json, with_label
from streamtrain.wire.prediction_record import (
    PREDICTION_CONTENT_TYPE,
    PredictionRecord,
    encode_prediction,
)

SPEC = SampleSpec(feature_shape=(16,), task="binary", num_classes=2)
FEATURES_AT = 24  # binary v1: magic 4, timestamp 8, weight 4, label 8, then the features
EMITTED_METRIC = "streamtrain_join_emitted_samples_total"


@dataclass(frozen=True)
class Stream:
    """The samples, and when each is served and labelled relative to the stream's start."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    served_after: npt.NDArray[np.float64]
    delays: npt.NDArray[np.float64]

    @property
    def ids(self) -> list[str]:
        return [f"req-{i}" for i in range(len(self.labels))]

    @property
    def label_order(self) -> npt.NDArray[np.int64]:
        return np.argsort(self.served_after + self.delays, kind="stable").astype(np.int64)


@dataclass(frozen=True)
class Replay:
    """The stream played from ``t0`` (epoch seconds)."""

    stream: Stream
    t0: float

    @property
    def served_at(self) -> npt.NDArray[np.float64]:
        return self.t0 + self.stream.served_after

    @property
    def labelled_at(self) -> npt.NDArray[np.float64]:
        return self.served_at + self.stream.delays

    def served_sample(self, i: int) -> bytes:
        """The row as a server logs it: label zero, weight 1, timestamp = served_at."""
        s = self.stream
        return encode_binary(SPEC, s.features[i], 0, 1.0, float(self.served_at[i]))

    def expected_joined(self, i: int) -> bytes:
        label = int(self.stream.labels[i])
        return with_label(SPEC, self.served_sample(i), label, 1.0, float(self.labelled_at[i]))


def make_stream(args: argparse.Namespace) -> Stream:
    info = hyperplane(num_classes=2, drift_at=None, drift_every=args.drift_every)
    chunks = list(info.iterate(args.samples, seed=args.seed, chunk_size=4096))
    features = np.concatenate([c.features for c in chunks]).astype(np.float32)
    labels = np.concatenate([np.asarray(c.labels) for c in chunks]).astype(np.int64)
    rng = np.random.default_rng(args.seed)
    served = np.arange(args.samples) / args.rate
    return Stream(
        features, labels, served, rng.uniform(args.delay_min, args.delay_max, len(labels))
    )


def _produce(producer: Producer, topic: str, value: bytes, **kwargs: object) -> None:
    while True:
        try:
            producer.produce(topic, value, partition=0, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def produce_logs(bootstrap: str, topics: dict[str, str], replay: Replay, live: bool) -> None:
    """Step 1: predictions and labels in event-time order; ``live`` waits for each event's
    time to come (the stream then takes ``samples / rate`` seconds)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    served, labelled = replay.served_at, replay.labelled_at
    events = sorted(
        [(float(t), 0, i) for i, t in enumerate(served)]
        + [(float(t), 1, i) for i, t in enumerate(labelled)]
    )
    ids = replay.stream.ids
    prediction_headers = [(CONTENT_TYPE_HEADER, PREDICTION_CONTENT_TYPE.encode())]
    wall_at_t0 = time.time() - replay.t0
    for at, kind, i in events:
        if live and (wait := at + wall_at_t0 - time.time()) > 0:
            producer.poll(0)
            time.sleep(wait)
        key, stamp = ids[i].encode(), int(at * 1000)
        if kind == 0:
            logged = PredictionRecord(ids[i], at, 1, "bench", (0.5, 0.5), replay.served_sample(i))
            value = encode_prediction(logged)
            _produce(
                producer, topics["predictions"], value, key=key, timestamp=stamp,
                headers=prediction_headers,
            )  # fmt: skip
        else:
            value = encode_label_json(ids[i], int(replay.stream.labels[i]), timestamp=at)
            _produce(producer, topics["labels"], value, key=key, timestamp=stamp)
        producer.poll(0)
    producer.flush(60)


def produce_samples(bootstrap: str, topic: str, replay: Replay, order: str) -> None:
    """Pre-joined samples: in serving order stamped served_at, or in label order stamped with
    the label's time (exactly what an exact join emits)."""
    s = replay.stream
    index = np.arange(len(s.labels)) if order == "served" else s.label_order
    stamps = replay.served_at if order == "served" else replay.labelled_at
    values = encode_binary_many(SPEC, s.features[index], s.labels[index], None, stamps[index])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    headers = [(CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode())]
    for value in values:
        _produce(producer, topic, value, headers=headers)
    producer.flush(60)


class JoinProcess:
    """``python -m streamtrain.cli join`` on its own topics, state folder and metrics port."""

    def __init__(self, bootstrap: str, topics: dict[str, str], root: Path) -> None:
        self.port = free_port()
        env = dict(
            os.environ,
            STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
            STREAMTRAIN_TOPICS__PREDICTIONS=topics["predictions"],
            STREAMTRAIN_TOPICS__LABELS=topics["labels"],
            STREAMTRAIN_TOPICS__LABELS_DEAD_LETTER=topics["labels_dlq"],
            STREAMTRAIN_TOPICS__SAMPLES=topics["joined"],
            STREAMTRAIN_MODEL__INPUT_SHAPE="[16]",
            STREAMTRAIN_MODEL__NUM_CLASSES="2",
            STREAMTRAIN_JOIN__STATE_DIR=str(root / f"{topics['joined']}-state"),
            STREAMTRAIN_JOIN__METRICS_PORT=str(self.port),
            # The embedded broker holds a group join for about half the session timeout.
            STREAMTRAIN_JOIN__SESSION_TIMEOUT_MS="2000",
            STREAMTRAIN_JOIN__GROUP_ID=f"{topics['joined']}-join",
        )
        self.log_path = root / f"{topics['joined']}-join.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamtrain.cli", "join"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _metrics(self) -> Scrape | None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the join exited with {self.process.returncode}: {self.log_path}")
        try:
            return scrape(f"http://127.0.0.1:{self.port}/metrics")
        except ScrapeError:
            return None

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/health/ready"
        while time.monotonic() < deadline:
            self._metrics()  # raises if the join died
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the join was not ready in {timeout:.0f} s: {self.log_path}")

    def wait_emitted(self, count: int, timeout: float = 600.0) -> Scrape:
        """Its metrics once it has emitted ``count`` samples."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self._metrics()
            if got is not None and got.total(EMITTED_METRIC) >= count:
                return got
            time.sleep(0.2)
        raise RuntimeError(f"the join did not emit {count} samples in {timeout:.0f} s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def read_topic(bootstrap: str, topic: str, count: int) -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-read-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    # Assigned, not subscribed: the embedded broker holds a group join for seconds.
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    records: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + 120
    while len(records) < count and time.monotonic() < deadline:
        for message in consumer.consume(10_000, timeout=1.0):
            if message.error() is None:
                records.append((message.key(), message.value()))
    consumer.close()
    return records


def check_joined(replay: Replay, joined: list[tuple[bytes | None, bytes]]) -> dict[str, Any]:
    """Step 3: each joined record against the sample a producer knowing the label sends, and
    the order the records came in."""
    stream = replay.stream
    index = {rid.encode(): i for i, rid in enumerate(stream.ids)}
    pre = encode_binary_many(SPEC, stream.features, stream.labels, None, replay.served_at)
    same_record = same_features = 0
    rows = []
    for key, value in joined:
        row = index[key or b""]
        rows.append(row)
        same_record += value == replay.expected_joined(row)
        same_features += value[FEATURES_AT:] == pre[row][FEATURES_AT:]
    order = np.asarray(rows)
    full = len(order) == len(stream.labels)
    return {
        "records": len(joined),
        "distinct_ids": len(set(rows)),
        "same_bytes_as_prejoined": same_record,
        "same_feature_bytes": same_features,
        "in_label_order": float(np.mean(order == stream.label_order)) if full else None,
        "in_serving_order": float(np.mean(order == np.arange(len(order)))) if full else None,
    }


def run_join(
    bootstrap: str, topics: dict[str, str], replay: Replay, live: bool, root: Path
) -> dict[str, Any]:
    """Steps 1 to 3 for one mode: live (join running while the stream plays) or backlog."""
    count = len(replay.stream.labels)
    if not live:
        produce_logs(bootstrap, topics, replay, live=False)
    join = JoinProcess(bootstrap, topics, root)
    try:
        join.wait_ready()
        if live:
            produce_logs(bootstrap, topics, replay, live=True)
        metrics = join.wait_emitted(count)
    finally:
        join.stop()
    result = check_joined(replay, read_topic(bootstrap, topics["joined"], count))
    result["expired"] = metrics.total("streamtrain_join_expired_predictions_total")
    result["dead_lettered"] = metrics.total("streamtrain_join_dead_lettered_records_total")
    return result


def train(
    bootstrap: str, topic: str, count: int, args: argparse.Namespace, root: Path, seed: int
) -> float:
    """Step 4: the real trainer over one topic; its whole-stream prequential accuracy."""
    name = f"{topic}-{uuid.uuid4().hex[:6]}"
    settings = load_settings(
        overrides={
            "model": {"name": "mlp", "input_shape": [16], "num_classes": 2},
            "optimizer": {"lr": args.lr},
            "kafka": {"bootstrap_servers": bootstrap},
            "topics": {
                "samples": topic,
                "dead_letter": f"{name}.dlq",
                "snapshots": f"{name}.snapshots",
            },
            "ingest": {
                "group_id": f"{name}.trainer",
                "start_from": "earliest",
                "max_batch_size": args.batch_size,
            },
            "train": {
                "device": "cpu",
                "seed": seed,
                "checkpoint_dir": str(root / name),
                "metric_window": count,
                "max_samples": count,
                "stop_when_idle": 20.0,
                "metrics_port": 0,
            },
        }
    )
    create_topics(bootstrap, [f"{name}.dlq", f"{name}.snapshots"])
    summary = build_trainer(settings).run()
    if summary.samples_seen != count:
        raise RuntimeError(f"{topic}: learned {summary.samples_seen} of {count} samples")
    return float(summary.rolling_score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=1000.0, help="served rows per second")
    parser.add_argument("--delay-min", type=float, default=0.5)
    parser.add_argument("--delay-max", type=float, default=3.0)
    parser.add_argument("--drift-every", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.005)
    args = parser.parse_args()
    stream = make_stream(args)
    run = uuid.uuid4().hex[:6]
    names = ("served", "label_order", "live", "backlog")
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        bootstrap, root = broker.bootstrap_servers, Path(tmp)
        joins: dict[str, dict[str, Any]] = {}
        for mode in ("live", "backlog"):
            topics = {
                part: f"bench-{run}-{mode}.{part}"
                for part in ("predictions", "labels", "labels_dlq", "joined")
            }
            broker.create_topics(list(topics.values()))
            # Live plays the stream from now; backlog finds it an hour old in the topics.
            t0 = time.time() + 1.0 if mode == "live" else time.time() - 3600.0
            joins[mode] = run_join(bootstrap, topics, Replay(stream, t0), mode == "live", root)
            joins[mode]["topic"] = topics["joined"]
        prejoined = Replay(stream, time.time())
        for order in ("served", "label_order"):
            topic = f"bench-{run}.prejoined-{order}"
            broker.create_topics([topic])
            produce_samples(bootstrap, topic, prejoined, order)
            joins[order] = {"topic": topic}
        scores = {
            name: train(bootstrap, joins[name]["topic"], args.samples, args, root, args.seed)
            for name in names
        }
        # The noise floor: the same samples in the same order, only the model's seed changed.
        served_topic = joins["served"]["topic"]
        other_seed = train(bootstrap, served_topic, args.samples, args, root, args.seed + 1)
    for mode in ("live", "backlog"):
        del joins[mode]["topic"]
    print(
        json.dumps(
            {
                "settings": vars(args),
                "joins": {mode: joins[mode] for mode in ("live", "backlog")},
                "prequential_accuracy": {k: round(v, 4) for k, v in scores.items()},
                "live_minus_label_order": round(scores["live"] - scores["label_order"], 4),
                "live_minus_served": round(scores["live"] - scores["served"], 4),
                "backlog_minus_served": round(scores["backlog"] - scores["served"], 4),
                "seed_noise_served": round(other_seed - scores["served"], 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
