"""Trainer throughput: the bare step loop vs the full trainer reading the same samples from Kafka.

Run: ``.venv/bin/python bench/train.py [--samples 200000] [--batch-sizes 32 256 1024]``

(a) ``Learner.learn`` on pre-built tensors (bench/train_step.py): the ceiling.
(b) ``streamtrain train``'s Trainer (built by ``build_trainer``) consuming binary-encoded samples
    from the embedded broker, with prefetching, checkpoints and snapshot publishing on.
The ratio (b)/(a) is the pipeline's efficiency. Both run in this one process, side by side,
on the MLP 16 -> 64 -> 2 with Adam; on CPU, and on CUDA too when present.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import DEFAULT_PARAMS, DEFAULT_SPEC, bare_step_rate

from streamtrain.broker import EmbeddedBroker
from streamtrain.cli.build_trainer import build_trainer
from streamtrain.client import SampleProducer
from streamtrain.config import load_settings
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


def pipeline_rate(bootstrap: str, topic: str, count: int, batch: int, device: str) -> float:
    """Samples/s of the full trainer from first fetch to the last of ``count`` samples."""
    tag = f"{topic}-{device.replace(':', '')}-{batch}"
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
                "model": {
                    "name": "mlp",
                    "task": "binary",
                    "input_shape": [16],
                    "params": dict(DEFAULT_PARAMS),
                },
                "optimizer": {"name": "adam", "lr": 1e-3},
                "train": {"device": device, "checkpoint_dir": checkpoints, "max_samples": count},
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
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with EmbeddedBroker() as broker:
        broker.create_topics(["bench-train"], partitions=1)
        seconds = produce(broker.bootstrap_servers, "bench-train", args.samples)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
            f"produced {args.samples:,} binary samples in {seconds:.1f} s"
        )
        print(f"{'device':6} {'batch':>6} {'(a) bare/s':>12} {'(b) trainer/s':>14} {'b/a':>6}")
        for device in devices:
            for batch in args.batch_sizes:
                bare = bare_step_rate(
                    "mlp", DEFAULT_SPEC, batch, args.bare_seconds, device, params=DEFAULT_PARAMS
                )
                full = pipeline_rate(
                    broker.bootstrap_servers, "bench-train", args.samples, batch, device
                )
                print(f"{device:6} {batch:>6} {bare:>12,.0f} {full:>14,.0f} {full / bare:>6.2f}")
    if not torch.cuda.is_available():
        print("CUDA: not available on this machine; GPU figures unmeasured")


if __name__ == "__main__":
    main()
