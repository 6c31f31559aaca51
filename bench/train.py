"""Trainer throughput against the right bound: consuming and stepping, done one after the other.

Run: ``.venv/bin/python bench/train.py [--samples 200000] [--batch-sizes 32 256 1024]``

Measured in this one process, side by side, on the MLP 16 -> 64 -> 2 with Adam (CPU, and
CUDA too when present), over the same binary samples on the embedded broker:

R   raw consume rate: confluent-kafka ``consume()`` of every record, no decoding.
Rs  our source: ``KafkaSampleSource.next_batch`` at the batch size (fetch, decode, cut).
S   bare step rate: ``Learner.learn`` on pre-built tensors (bench/train_step.py).
T   the trainer (``build_trainer``): prefetch, steps, checkpoints and snapshots on.

``T / serial(R, S)`` with ``serial(a, b) = 1 / (1/a + 1/b)`` is the rate of doing both one
after the other; above 1 means the prefetch thread overlaps them. ``T / serial(Rs, S)``
separates the loop's own cost from our decoding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import DEFAULT_PARAMS, DEFAULT_SPEC, bare_step_rate

from streamtrain.broker import EmbeddedBroker
from streamtrain.builders.trainer import build_trainer
from streamtrain.client import SampleProducer
from streamtrain.config import load_settings
from streamtrain.devices import training_threads
from streamtrain.ingest.options import SourceOptions
from streamtrain.ingest.source import KafkaSampleSource
from streamtrain.kafka import KafkaConnection


def produce(bootstrap: str, topic: str, count: int) -> float:
    """Write ``count`` binary samples to one partition; returns seconds taken."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(count, 16)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    started = time.perf_counter()
    with SampleProducer(
        spec=DEFAULT_SPEC,
        topic=topic,
        format="binary",
        kafka=KafkaConnection(bootstrap),
    ) as producer:
        for start in range(0, count, 10_000):
            producer.send_many(x[start : start + 10_000], y[start : start + 10_000], partition=0)
        producer.flush()
    return time.perf_counter() - started


def raw_consume_rate(bootstrap: str, topic: str, count: int) -> float:
    """Records/s of confluent-kafka's bulk ``consume`` from the start of the topic."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-raw",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen = 0
    started = time.perf_counter()
    while seen < count:
        seen += len(consumer.consume(num_messages=100_000, timeout=0.1))
    elapsed = time.perf_counter() - started
    consumer.close()
    return count / elapsed


def source_rate(bootstrap: str, topic: str, count: int, batch: int) -> float:
    """Samples/s of ``KafkaSampleSource`` batches at ``batch`` (the trainer's ingest alone)."""
    with KafkaSampleSource(
        spec=DEFAULT_SPEC,
        topic=topic,
        group_id=f"{topic}-source-{batch}",
        kafka=KafkaConnection(bootstrap, client="confluent"),
        options=SourceOptions(start_from="earliest", max_batch_size=batch, max_wait_ms=50),
    ) as source:
        samples = 0
        started = time.perf_counter()
        while samples < count:
            samples += source.next_batch().size
        return samples / (time.perf_counter() - started)


def serial(a: float, b: float) -> float:
    return 1.0 / (1.0 / a + 1.0 / b)


MLP_MODEL = {"name": "mlp", "task": "binary", "input_shape": [16], "params": dict(DEFAULT_PARAMS)}
# One optimizer step per fetched batch, as the bare step S takes: the trainer's default
# (`auto`) starts at one sample per step, which would compare different work.
ADAM_PER_BATCH = {"name": "adam", "lr": 1e-3, "step_samples": "batch"}


def pipeline_rate(
    bootstrap: str,
    topic: str,
    count: int,
    batch: int,
    device: str,
    threads: int,
    *,
    model: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
) -> float:
    """Samples/s of the full trainer from first fetch to the last of ``count`` samples
    (``model``, ``optimizer``, ``train``: settings sections over the MLP defaults)."""
    tag = f"{topic}-{device.replace(':', '')}-{batch}-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory() as checkpoints:
        settings = load_settings(
            overrides={
                "kafka": {"bootstrap_servers": bootstrap},
                "topics": {
                    "samples": topic,
                    "dead_letter": f"{tag}-dlq",
                    "snapshots": f"{tag}-snap",
                },
                "ingest": {
                    "group_id": tag,
                    "start_from": "earliest",
                    "max_batch_size": batch,
                    "max_wait_ms": 50,
                },
                "model": model or MLP_MODEL,
                "optimizer": optimizer or ADAM_PER_BATCH,
                "train": {
                    "device": device,
                    "checkpoint_dir": checkpoints,
                    "max_samples": count,
                    "torch_threads": threads,
                    **(train or {}),
                },
            }
        )
        summary = build_trainer(settings).run()
    if summary.samples_seen < count:
        raise RuntimeError(f"trainer saw {summary.samples_seen} of {count} samples")
    return summary.samples_seen / summary.elapsed_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--bare-seconds", type=float, default=3.0)
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="default: the trainer's own default"
    )
    args = parser.parse_args()
    # S and T step with the same intra-op threads: the trainer's default (every core but one).
    threads = args.torch_threads or training_threads()
    torch.set_num_threads(threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with EmbeddedBroker() as broker:
        broker.create_topics(["bench-train"], partitions=1)
        seconds = produce(broker.bootstrap_servers, "bench-train", args.samples)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads (S and T); "
            f"produced {args.samples:,} binary samples in {seconds:.1f} s"
        )
        raw = raw_consume_rate(broker.bootstrap_servers, "bench-train", args.samples)
        print(f"R raw confluent consume: {raw:,.0f} records/s")
        header = ("device", "batch", "Rs src/s", "S bare/s", "T trainer/s", "T/ser(R,S)")
        print(
            f"{header[0]:6} {header[1]:>6} "
            + " ".join(f"{h:>12}" for h in header[2:])
            + f" {'T/ser(Rs,S)':>12}"
        )
        for device in devices:
            for batch in args.batch_sizes:
                src = source_rate(broker.bootstrap_servers, "bench-train", args.samples, batch)
                bare = bare_step_rate(
                    "mlp", DEFAULT_SPEC, batch, args.bare_seconds, device, params=DEFAULT_PARAMS
                )
                full = pipeline_rate(
                    broker.bootstrap_servers, "bench-train", args.samples, batch, device, threads
                )
                print(
                    f"{device:6} {batch:>6} {src:>12,.0f} {bare:>12,.0f} {full:>12,.0f} "
                    f"{full / serial(raw, bare):>12.2f} {full / serial(src, bare):>12.2f}"
                )
    if not torch.cuda.is_available():
        print("CUDA: not available on this machine; GPU figures unmeasured")


if __name__ == "__main__":
    main()
