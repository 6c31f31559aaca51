"""Delayed labels add no skew: the same stream, trained from pre-joined samples and through
the prediction log, labels sent later and the real ``streamtrain join``.

Run: ``.venv/bin/python bench/delayed_labels.py [--samples 20000] [--seed 0]``

One embedded broker, one stream (hyperplane, 16 features, 2 classes, a recurring drift), in
this order:

1. every sample is "served" at ``t0 + i / rate``: a prediction-log record
   (:func:`encode_prediction`) whose embedded sample is the row as a server logs it (binary
   layout v1, label zero, weight 1, timestamp = served_at), keyed by its request id; its label
   follows ``U(delay_min, delay_max)`` seconds later (JSON label, keyed by the same id). Both
   topics are written in event-time order, interleaved as a live system writes them;
2. the real join (``python -m streamtrain.cli join``, a subprocess with its default policies)
   runs until it has emitted every sample to the joined topic, then stops;
3. every joined record is compared byte for byte with the sample a producer that knew the
   label would have sent (``with_label`` of the served bytes: label, weight 1, the label's
   timestamp) and its feature bytes with the pre-joined sample's;
4. the real trainer (``build_trainer``, as ``streamtrain train`` builds it; same model, seed
   and batch size, ``metric_window`` = the stream) learns, each from its own topic:
   (a) pre-joined samples in serving order (labels known at once, the no-delay ideal),
   (b) pre-joined samples in label order (what an exact hand-built join would emit),
   (c) the join's output;
   and the whole-stream prequential accuracy of each is printed, with (c) - (b) and (c) - (a).
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

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.cli.build_trainer import build_trainer
from streamtrain.config import load_settings
from streamtrain.datasets import hyperplane
from streamtrain.demo.scrape import ScrapeError, scrape
from streamtrain.kafka import create_topics
from streamtrain.spec import SampleSpec
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
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    served_at: npt.NDArray[np.float64]
    labelled_at: npt.NDArray[np.float64]

    @property
    def ids(self) -> list[str]:
        return [f"req-{i}" for i in range(len(self.labels))]

    @property
    def label_order(self) -> npt.NDArray[np.int64]:
        return np.argsort(self.labelled_at, kind="stable")


def make_stream(args: argparse.Namespace) -> Stream:
    info = hyperplane(num_classes=2, drift_at=None, drift_every=args.drift_every)
    chunks = list(info.iterate(args.samples, seed=args.seed, chunk_size=4096))
    features = np.concatenate([c.features for c in chunks]).astype(np.float32)
    labels = np.concatenate([np.asarray(c.labels) for c in chunks]).astype(np.int64)
    rng = np.random.default_rng(args.seed)
    t0 = time.time() - args.samples / args.rate - 3600.0  # an hour ago: event time only
    served = t0 + np.arange(args.samples) / args.rate
    delays = rng.uniform(args.delay_min, args.delay_max, args.samples)
    return Stream(features, labels, served, served + delays)


def served_sample(stream: Stream, i: int) -> bytes:
    """The row as a server logs it: label zero, weight 1, timestamp = served_at."""
    return encode_binary(SPEC, stream.features[i], 0, 1.0, float(stream.served_at[i]))


def expected_joined(stream: Stream, i: int) -> bytes:
    return with_label(
        SPEC, served_sample(stream, i), int(stream.labels[i]), 1.0, float(stream.labelled_at[i])
    )


def produce_logs(bootstrap: str, topics: dict[str, str], stream: Stream) -> None:
    """Step 1: predictions and labels interleaved in event-time order."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    events = sorted(
        [(float(t), 0, i) for i, t in enumerate(stream.served_at)]
        + [(float(t), 1, i) for i, t in enumerate(stream.labelled_at)]
    )
    ids = stream.ids
    for at, kind, i in events:
        key = ids[i].encode()
        if kind == 0:
            record = PredictionRecord(ids[i], at, 1, "bench", (0.5, 0.5), served_sample(stream, i))
            value = encode_prediction(record)
            headers = [(CONTENT_TYPE_HEADER, PREDICTION_CONTENT_TYPE.encode())]
            topic = topics["predictions"]
        else:
            value = encode_label_json(ids[i], int(stream.labels[i]), timestamp=at)
            headers = []
            topic = topics["labels"]
        while True:
            try:
                producer.produce(
                    topic, value, key, timestamp=int(at * 1000), headers=headers, partition=0
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)


def produce_samples(bootstrap: str, topic: str, stream: Stream, order: str) -> None:
    """Pre-joined samples: in serving order with served_at, or in label order with the
    label's timestamp (exactly what an exact join emits)."""
    index = np.arange(len(stream.labels)) if order == "served" else stream.label_order
    stamps = stream.served_at if order == "served" else stream.labelled_at
    values = encode_binary_many(
        SPEC, stream.features[index], stream.labels[index], None, stamps[index]
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    headers = [(CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode())]
    for value in values:
        while True:
            try:
                producer.produce(topic, value, headers=headers, partition=0)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def run_join(bootstrap: str, topics: dict[str, str], root: Path, count: int) -> float:
    """Step 2: the real join until it has emitted ``count`` samples; returns its seconds."""
    port = free_port()
    env = dict(
        os.environ,
        STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        STREAMTRAIN_TOPICS__PREDICTIONS=topics["predictions"],
        STREAMTRAIN_TOPICS__LABELS=topics["labels"],
        STREAMTRAIN_TOPICS__LABELS_DEAD_LETTER=topics["labels_dlq"],
        STREAMTRAIN_TOPICS__SAMPLES=topics["joined"],
        STREAMTRAIN_MODEL__INPUT_SHAPE="[16]",
        STREAMTRAIN_MODEL__NUM_CLASSES="2",
        STREAMTRAIN_JOIN__STATE_DIR=str(root / "join-state"),
        STREAMTRAIN_JOIN__METRICS_PORT=str(port),
        STREAMTRAIN_JOIN__SESSION_TIMEOUT_MS="2000",
        STREAMTRAIN_JOIN__GROUP_ID=f"bench-join-{uuid.uuid4().hex[:6]}",
    )
    log = (root / "join.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamtrain.cli", "join"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        joined = 0.0
        while joined < count:
            if process.poll() is not None:
                raise RuntimeError(f"the join exited with {process.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the join emitted {joined:.0f} of {count} in 600 s")
            time.sleep(0.5)
            try:
                joined = scrape(f"http://127.0.0.1:{port}/metrics").total(EMITTED_METRIC)
            except ScrapeError:
                continue
        return time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


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


def check_bytes(stream: Stream, joined: list[tuple[bytes | None, bytes]]) -> dict[str, int]:
    """Step 3: each joined record against the sample a producer knowing the label sends."""
    index = {rid.encode(): i for i, rid in enumerate(stream.ids)}
    pre = encode_binary_many(SPEC, stream.features, stream.labels, None, stream.served_at)
    same_record = same_features = unknown = 0
    seen: set[int] = set()
    for key, value in joined:
        row = index.get(key or b"")
        if row is None:
            unknown += 1
            continue
        seen.add(row)
        same_record += value == expected_joined(stream, row)
        same_features += value[FEATURES_AT:] == pre[row][FEATURES_AT:]
    return {
        "joined": len(joined),
        "distinct": len(seen),
        "unmatched": unknown,
        "same_record": same_record,
        "same_features": same_features,
    }


def train(bootstrap: str, topic: str, count: int, args: argparse.Namespace, root: Path) -> float:
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
                "seed": args.seed,
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
    parser.add_argument("--rate", type=float, default=500.0, help="served rows per second")
    parser.add_argument("--delay-min", type=float, default=0.5)
    parser.add_argument("--delay-max", type=float, default=3.0)
    parser.add_argument("--drift-every", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.005)
    args = parser.parse_args()
    stream = make_stream(args)
    run = uuid.uuid4().hex[:6]
    topics = {
        name: f"bench-{run}.{name}"
        for name in ("predictions", "labels", "labels_dlq", "joined", "served", "label_order")
    }
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        bootstrap, root = broker.bootstrap_servers, Path(tmp)
        broker.create_topics(list(topics.values()))
        produce_logs(bootstrap, topics, stream)
        join_seconds = run_join(bootstrap, topics, root, args.samples)
        joined = read_topic(bootstrap, topics["joined"], args.samples)
        check = check_bytes(stream, joined)
        produce_samples(bootstrap, topics["served"], stream, "served")
        produce_samples(bootstrap, topics["label_order"], stream, "label")
        scores = {
            order: train(bootstrap, topics[order], args.samples, args, root)
            for order in ("served", "label_order", "joined")
        }
    print(
        json.dumps(
            {
                "settings": vars(args),
                "join_seconds": round(join_seconds, 2),
                "bytes": check,
                "prequential_accuracy": {k: round(v, 4) for k, v in scores.items()},
                "joined_minus_label_order": round(scores["joined"] - scores["label_order"], 4),
                "joined_minus_served": round(scores["joined"] - scores["served"], 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
