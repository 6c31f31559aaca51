"""Trainer throughput on CUDA: the bare step against the whole pipeline (broker -> ingest -> step).

Run: ``python bench/gpu_trainer.py --device cuda [--batch-sizes 256 1024 4096]``
(bench/gpu_check.py runs it; ``--smoke`` is its CPU dry run: tiny sizes, fp32 only).

For ``mlp`` (16 -> 64 -> binary, Adam) and ``dlrm`` (the ``ctr`` click stream: 4 dense
features, user and item IDs into two 131,072 x 32 tables on the device, row-wise Adagrad),
in fp32 and bf16 autocast, at each batch size, side by side in one process:

S   the bare step: ``Learner.learn`` on batches already on the device (bench/train_step.py);
P   the whole pipeline: ``build_trainer(settings).run()`` over the same samples (25 batches
    of the largest size) pre-produced to the embedded broker as binary records: fetch,
    decode, batch, copy to the device, step, with snapshots and checkpoints on; one
    optimizer step per fetched batch, as S takes.

P / S is the share of the device's step rate the service delivers (the issue's goal for
later: >= 0.9 at batch 1024). Each row is written to ``--report`` as soon as it is measured,
so a stage stopped at its time budget keeps the rows it has.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import ADAM_PER_BATCH, MLP_MODEL, pipeline_rate
from train import produce as produce_mlp
from train_step import DEFAULT_PARAMS, DEFAULT_SPEC, bare_step_rate

from streamtrain.broker import EmbeddedBroker
from streamtrain.client import SampleProducer
from streamtrain.datasets.ctr import ctr
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.sparse_torch import to_tensors

DLRM_PARAMS: dict[str, Any] = {
    "rows": 131_072,
    "embedding_dim": 32,
    "bottom_sizes": [64],
    "top_sizes": [64, 32],
}
DLRM_MODEL: dict[str, Any] = {
    "name": "dlrm",
    "task": "binary",
    "input_shape": [4],
    "sparse": [
        {"name": "user", "table": "users", "max_length": 1},
        {"name": "item", "table": "items", "max_length": 1},
    ],
    "params": DLRM_PARAMS,
}
ADAGRAD_PER_BATCH = {"name": "adagrad", "lr": 0.05, "step_samples": "batch"}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def produce_ctr(bootstrap: str, topic: str, count: int) -> float:
    """``count`` ctr samples (dense + user/item IDs) to one partition; seconds taken."""
    info = ctr()
    started = time.perf_counter()
    with SampleProducer(
        spec=info.spec, topic=topic, format="binary", kafka=KafkaConnection(bootstrap)
    ) as producer:
        for chunk in info.iterate(count, seed=0, chunk_size=8192):
            producer.send_many(chunk.features, chunk.labels, sparse=chunk.sparse, partition=0)
        producer.flush()
    return time.perf_counter() - started


def dlrm_batches(batch: int, device: torch.device) -> list[tuple[Any, ...]]:
    """Eight ctr batches on ``device``: ``learn``'s arguments with the sparse IDs."""
    out: list[tuple[Any, ...]] = []
    for chunk in ctr().iterate(8 * batch, seed=1, chunk_size=batch):
        assert chunk.sparse is not None
        out.append(
            (
                torch.from_numpy(chunk.features).to(device),
                torch.from_numpy(np.asarray(chunk.labels)).to(device),
                torch.ones(len(chunk), device=device),
                to_tensors(chunk.sparse, device),
            )
        )
    return out


def bare(model: str, batch: int, device: str, dtype: torch.dtype | None, seconds: float) -> float:
    if model == "mlp":
        return bare_step_rate(
            "mlp", DEFAULT_SPEC, batch, seconds, device, params=DEFAULT_PARAMS, autocast_dtype=dtype
        )
    return bare_step_rate(
        "dlrm",
        ctr().spec,
        batch,
        seconds,
        device,
        params=DLRM_PARAMS,
        optimizer="adagrad",
        lr=0.05,
        autocast_dtype=dtype,
        batches=dlrm_batches(batch, torch.device(device)),
    )


class Report:
    """The Markdown fragment, rewritten after every row."""

    def __init__(self, path: Path | None, header: str) -> None:
        self.path = path
        self.lines = [
            header,
            "",
            "| model | precision | batch | S bare step/s | P pipeline/s | P ÷ S |",
            "|---|---|---:|---:|---:|---:|",
        ]
        self.notes: list[str] = []
        self.flush()

    def row(self, *cells: str) -> None:
        self.lines.append("| " + " | ".join(cells) + " |")
        print(self.lines[-1], flush=True)
        self.flush()

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text, flush=True)
        self.flush()

    def flush(self) -> None:
        if self.path is not None:
            text = "\n".join(self.lines + [""] + [f"- {n}" for n in self.notes])
            self.path.write_text(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--models", nargs="+", default=["mlp", "dlrm"])
    parser.add_argument("--bare-seconds", type=float, default=1.0)
    parser.add_argument(
        "--steps", type=int, default=25, help="pipeline batches at the largest batch size"
    )
    parser.add_argument("--smoke", action="store_true", help="CPU dry run: tiny sizes, fp32")
    parser.add_argument("--report", type=Path, default=None, help="Markdown fragment to write")
    args = parser.parse_args()
    if args.smoke:
        args.batch_sizes, args.bare_seconds, args.steps = [64], 0.2, 4
    precisions = dict(PRECISIONS)
    cuda = args.device.startswith("cuda")
    threads = 1 if not cuda else max(1, min(8, torch.get_num_threads()))
    torch.set_num_threads(threads)
    count = max(max(args.batch_sizes) * args.steps, 32 * args.steps)
    report = Report(
        args.report,
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {args.device}"
        + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
        + f"; {threads} torch threads; every pipeline row trains on the same {count:,} "
        f"pre-produced binary records; bare step {args.bare_seconds:g} s per row",
    )
    if not cuda:
        del precisions["bf16"]
        report.note("bf16: skipped (CUDA only: the trainer refuses autocast on the CPU)")
        report.note("CUDA: skipped (no CUDA here); these rows are a CPU smoke run, not figures")
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        broker.create_topics(["gpu-mlp", "gpu-dlrm"], partitions=1)
        for model in args.models:
            topic = f"gpu-{model}"
            seconds = (produce_mlp if model == "mlp" else produce_ctr)(bootstrap, topic, count)
            report.note(f"{model}: produced {count:,} records in {seconds:.1f} s")
            settings = (
                (MLP_MODEL, ADAM_PER_BATCH) if model == "mlp" else (DLRM_MODEL, ADAGRAD_PER_BATCH)
            )
            for name, dtype in precisions.items():
                for batch in args.batch_sizes:
                    s = bare(model, batch, args.device, dtype, args.bare_seconds)
                    p = pipeline_rate(
                        bootstrap, topic, count, batch, args.device, threads,
                        model=settings[0], optimizer=settings[1],
                        train={"autocast": "off" if dtype is None else name},
                    )  # fmt: skip
                    report.row(model, name, str(batch), f"{s:,.0f}", f"{p:,.0f}", f"{p / s:.2f}")


if __name__ == "__main__":
    main()
