"""The delayed-label join: joined samples/s of one join process, memory per pending prediction,
and what a partition hand-over costs, on the embedded broker, in one run.

Run: ``.venv/bin/python bench/join.py [--count 100000] [--features 16] [--partitions 2]``

1. **Throughput.** ``--count`` predictions (binary sample of ``--features`` float32 features,
   36-character uuid request ids) are logged to the predictions topic, then one label per id
   to the labels topic, so every prediction is pending when the labels arrive (the join's worst
   case for state). One in-process join (``build_join``: the same objects as ``streamtrain
   join``, default settings, ``checkpoint_every_s`` 2) is timed from holding its partitions to
   its last sample acknowledged (its closing checkpoint included).
2. **Memory per pending prediction.** A ``PartitionState`` (no Kafka) takes ``--pending``
   logged predictions; RSS before and after, over the count, for 16 and 128 features. The
   checkpoint file size per pending prediction is reported beside it.
3. **Hand-over.** ``streamtrain join`` replicas as processes (``session_timeout_ms`` 6000, the
   default) over ``--partitions`` x 2 partitions: the time a second replica needs to hold its
   share after it answers /metrics (scale up), and the time until the first holds every
   partition again after ``kill -9`` of the second.
4. **End-to-end freshness**, label produced -> a served prediction that learned from it
   (p50/p99): see :mod:`join_freshness` (``--rate``, ``--seconds``).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import join_freshness
import numpy as np
from prometheus_client import Gauge, Histogram

from streamtrain import metrics
from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.builders.join import build_join
from streamtrain.config import load_settings
from streamtrain.join.partition_state import JoinPolicy, PartitionState, SourceRecord
from streamtrain.join.state_file import write_state
from streamtrain.kafka import KafkaConnection, create_topics, record_producer
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import encode_binary
from streamtrain.wire.label_record import encode_label_json
from streamtrain.wire.prediction_record import PredictionRecord, encode_prediction


def _spec(features: int) -> SampleSpec:
    return SampleSpec(feature_shape=(features,), task="binary")


def _logged(spec: SampleSpec, rid: str, features: np.ndarray, served_at: float) -> bytes:
    sample = encode_binary(spec, features, 0, timestamp=served_at)
    return encode_prediction(PredictionRecord(rid, served_at, 1, "bench", (0.3, 0.7), sample))


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _produce(kafka: KafkaConnection, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = record_producer(kafka, linger_ms=5)
    started = time.perf_counter()
    for key, value in records:
        producer.send(topic, value, key=key)
    producer.flush(120)
    producer.close(10)
    return time.perf_counter() - started


def throughput(bootstrap: str, count: int, features: int, partitions: int) -> None:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    kafka = KafkaConnection(bootstrap)
    spec = _spec(features)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(count, features)).astype(np.float32)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    now = time.time()
    create_topics(kafka, [f"{name}-preds", f"{name}-labels"], partitions)
    create_topics(kafka, [f"{name}-samples", f"{name}-dlq"], 1)
    preds = [(r.encode(), _logged(spec, r, x[i], now)) for i, r in enumerate(ids)]
    labels = [(r.encode(), encode_label_json(r, i % 2)) for i, r in enumerate(ids)]
    _produce(kafka, f"{name}-preds", preds)
    _produce(kafka, f"{name}-labels", labels)
    with tempfile.TemporaryDirectory() as state_dir:
        settings = load_settings(
            overrides={
                "kafka": {"bootstrap_servers": bootstrap},
                "topics": {
                    "predictions": f"{name}-preds",
                    "labels": f"{name}-labels",
                    "samples": f"{name}-samples",
                    "labels_dead_letter": f"{name}-dlq",
                },
                "model": {"task": "binary", "input_shape": [features]},
                "join": {"state_dir": state_dir, "window_s": 3600, "group_id": name},
            }
        )
        running = build_join(settings, create_missing_topics=False)
        joiner = running.joiner
        held_at: list[float] = []

        def done() -> bool:
            if joiner.states and not held_at:
                held_at.append(time.perf_counter())
            return sum(len(s.resolved) for s in joiner.states.values()) >= count

        joiner.run(stop_when=done)  # returns after its closing checkpoint (all acknowledged)
        elapsed = time.perf_counter() - held_at[0]
        running.close()
    checkpoints = _histogram(metrics.JOIN_CHECKPOINT_SECONDS)
    print(
        f"throughput: {count} labels joined to {count} pending predictions ({features} features,"
        f" {partitions} partitions) in {elapsed:.2f} s = {count / elapsed:,.0f} joined samples/s"
        f" ({2 * count / elapsed:,.0f} input records/s); {checkpoints[0]:.0f} checkpoints took"
        f" {checkpoints[1]:.2f} s in all, the last"
        f" {_gauge(metrics.JOIN_CHECKPOINT_BYTES):,.0f} bytes"
    )


def _gauge(gauge: Gauge) -> float:
    return next(s.value for m in gauge.collect() for s in m.samples)


def _histogram(histogram: Histogram) -> tuple[float, float]:
    """(count, sum) of an unlabelled histogram."""
    found = {s.name: s.value for m in histogram.collect() for s in m.samples}
    return found[f"{histogram._name}_count"], found[f"{histogram._name}_sum"]


def memory(pending: int, features: int) -> None:
    spec = _spec(features)
    state = PartitionState(0, JoinPolicy(spec, window_s=3600, max_pending_predictions=pending))
    rng = np.random.default_rng(1)
    now = time.time()
    records = [
        SourceRecord(
            "p", 0, i, int(now * 1000), None, _logged(spec, str(uuid.uuid4()), row, now), ()
        )
        for i, row in enumerate(rng.normal(size=(pending, features)).astype(np.float32))
    ]
    sample_bytes = len(encode_binary(spec, np.zeros(features, np.float32), 0))
    gc.collect()
    before = _rss()
    for record in records:
        state.add_prediction(record)
    gc.collect()
    per = (_rss() - before) / pending
    del records
    with tempfile.TemporaryDirectory() as folder:
        size = write_state(Path(folder) / "state.safetensors", state, {0: 0})
    print(
        f"memory: {pending} pending predictions, {features} features ({sample_bytes}-byte sample,"
        f" 36-char id): {per:.0f} bytes RSS each; checkpoint {size / pending:.0f} bytes each"
    )


def _assigned(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("streamtrain_join_assigned_partitions "):
            return float(line.split()[1])
    return None


def _wait(port: int, wanted: float, timeout: float = 120.0) -> float:
    started = time.perf_counter()
    while _assigned(port) != wanted:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"replica on {port} did not hold {wanted} partitions")
        time.sleep(0.02)
    return time.perf_counter() - started


def handover(bootstrap: str, partitions: int) -> None:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    total = 2 * partitions
    create_topics(bootstrap, [f"{name}-preds", f"{name}-labels"], total)
    with tempfile.TemporaryDirectory() as state_dir:
        env = {
            **os.environ,
            "STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "STREAMTRAIN_TOPICS__PREDICTIONS": f"{name}-preds",
            "STREAMTRAIN_TOPICS__LABELS": f"{name}-labels",
            "STREAMTRAIN_TOPICS__SAMPLES": f"{name}-samples",
            "STREAMTRAIN_TOPICS__LABELS_DEAD_LETTER": f"{name}-dlq",
            "STREAMTRAIN_JOIN__STATE_DIR": state_dir,
            "STREAMTRAIN_JOIN__GROUP_ID": name,
        }
        ports = [free_port(), free_port()]
        command = [sys.executable, "-m", "streamtrain.cli", "join"]
        replicas = [
            subprocess.Popen(
                command,
                env={**env, "STREAMTRAIN_JOIN__METRICS_PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in ports[:1]
        ]
        try:
            first_s = _wait(ports[0], total)
            replicas.append(
                subprocess.Popen(
                    command,
                    env={**env, "STREAMTRAIN_JOIN__METRICS_PORT": str(ports[1])},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            while _assigned(ports[1]) is None:  # started: interpreter, imports, metrics up
                time.sleep(0.02)
            scale_up_s = _wait(ports[1], partitions)
            _wait(ports[0], partitions)
            replicas[1].send_signal(signal.SIGKILL)
            replicas[1].wait(timeout=30)
            takeover_s = _wait(ports[0], total)
        finally:
            for replica in replicas:
                if replica.poll() is None:
                    replica.terminate()
                    replica.wait(timeout=60)
    print(
        f"hand-over ({total} partition pairs, session_timeout_ms 6000): first replica holds all"
        f" {first_s:.1f} s after start; a second holds its {partitions} {scale_up_s:.1f} s after"
        f" its /metrics answers; after kill -9 of it the first holds all again in"
        f" {takeover_s:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--pending", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=100.0, help="Section 4: requests/s.")
    parser.add_argument("--seconds", type=float, default=20.0, help="Section 4: measured s.")
    parser.add_argument("--memory-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_only:
        memory(args.pending, args.memory_only)
        return
    for features in (16, 128):  # each in a fresh process: freed memory would hide growth
        run = [sys.executable, __file__, "--pending", str(args.pending)]
        subprocess.run([*run, "--memory-only", str(features)], check=True)
    with EmbeddedBroker() as broker:
        throughput(broker.bootstrap_servers, args.count, args.features, args.partitions)
        handover(broker.bootstrap_servers, args.partitions)
        found = join_freshness.measure(broker.bootstrap_servers, args.rate, args.seconds)
        print(join_freshness.describe(found))


if __name__ == "__main__":
    main()
