"""streamtrain vs River and deep-river: the same streams, one run, one machine.

For every stream, each learner is evaluated prequentially (test, then train) over the whole
stream: river, deep-river and a last-label baseline one sample at a time; streamtrain's
``linear`` and ``mlp`` in-process at micro-batches 1, 16 and 128 (the same ``Learner`` the
trainer runs), and through the real pipeline (embedded broker, binary producer, the trainer
``streamtrain train`` builds). Writes a markdown report to stdout and ``bench/results/peers.md``.

Usage::

    .venv/bin/python bench/peers.py                 # the full bench, ~10-15 min on 2 cores
    .venv/bin/python bench/peers.py --quick         # 2k-sample smoke run, no file written
    .venv/bin/python bench/peers.py --streams phishing digits --no-pipeline
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from peers_inprocess import SCALED_MODELS, STREAMTRAIN_MODELS, run_in_process
from peers_pipeline import run_pipeline
from peers_report import Row, header, render
from peers_river import PEERS, RunResult, run_peer
from peers_streams import BUILDERS, Stream, build_stream

from streamtrain.broker import EmbeddedBroker

RESULTS = Path(__file__).resolve().parent / "results" / "peers.md"

NOTES = (
    "Prequential: each sample is predicted by the model as it stands, scored, then learned "
    "from. streamtrain with a micro-batch of B predicts all B samples with the current weights, "
    "then takes one step on them (`Learner.learn` scores before it steps).",
    "Accuracy is over the whole stream (every sample counts, the first one included). "
    "samples/s is the learner's time only (predict + learn); building the stream and river's "
    "dicts is not timed.",
    "Pipeline rows: the stream is first produced to a fresh topic (binary codec, "
    "`SampleProducer.send_many`), then `build_trainer(settings).run()` drains it with "
    "`max_samples` = stream length; `samples/s` is `samples_seen / elapsed_seconds` of its "
    "`TrainSummary` (consume, decode, step, snapshots every 50 steps / 2 s, checkpoints, start "
    "and stop). `metric_window` = stream length makes the trainer's prequential window span "
    "the whole stream, so `rolling_score` is the whole-stream accuracy.",
    "Hyperparameters are fixed across streams and batch sizes (no per-stream tuning for "
    "anyone): river defaults (LogisticRegression SGD lr 0.01 behind StandardScaler, "
    "OneVsRest for digits; HoeffdingAdaptiveTree and ARF(10 trees) defaults); deep-river and "
    "streamtrain `mlp` share one architecture (features -> 64 ReLU -> logits) and optimizer "
    "(Adam, lr 0.01); streamtrain `linear` is Adam lr 0.01. Same seed (7) everywhere. "
    "streamtrain uses one logit + BCE on 2-class streams, deep-river two logits + "
    "cross-entropy.",
    "Rows marked ×√B use the learning rate times sqrt(batch size) (in-process only): one step "
    "per batch of B replaces B steps, so an unscaled rate learns B times more slowly.",
    "A pipeline row and the in-process row of the same model and batch size are expected to "
    "show the same accuracy: the trainer takes the same steps on the same batches from the same "
    "seed, so equal figures check that nothing is lost or reordered on the way through Kafka.",
    "Features are encoded once for everyone by documented ranges (SEA /10, Agrawal numeric "
    "by their maximum plus one-hot elevel/car/zipcode, digits /16). On top of that river's "
    "LogisticRegression standardises (StandardScaler), as river users do, and so do "
    "streamtrain rows marked `standardize`: the models' online standardiser (running mean and "
    "variance per feature, updated after each training forward, saved with the weights; the "
    "default for `linear` and `mlp`). Rows marked `raw` are the same models with "
    "`standardize: false`, i.e. streamtrain before the standardiser (in-process only).",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--synthetic-samples", type=int, default=20_000)
    parser.add_argument("--digits-passes", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--pipeline-batches", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the Kafka runs")
    parser.add_argument("--quick", action="store_true", help="2k samples, report not saved")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.synthetic_samples, args.digits_passes = 2_000, 1
    return args


def stream_size(name: str, args: argparse.Namespace) -> int:
    if name == "digits":
        return 1797 * int(args.digits_passes)
    if name == "phishing":
        return 1250
    return int(args.synthetic_samples)


def progress(row: Row) -> None:
    print(
        f"  {row.title:70s} acc {row.accuracy:.3f}  {row.samples_per_second:10.0f} samples/s",
        file=sys.stderr,
        flush=True,
    )


def bench_stream(stream: Stream, args: argparse.Namespace, bootstrap: str | None) -> list[Row]:
    rows: list[Row] = []

    def add(label: str, family: str, how: str, batch: int | None, result: RunResult) -> None:
        rows.append(
            Row(stream.name, label, family, how, batch, result.accuracy, result.samples_per_second)
        )
        progress(rows[-1])

    dicts = stream.as_dicts()
    for peer in PEERS:
        add(peer.name, peer.family, "one at a time", None, run_peer(peer, stream, dicts))
    for config in STREAMTRAIN_MODELS:
        for batch in args.batches:
            add(
                config.label,
                "streamtrain",
                "in-process",
                batch,
                run_in_process(config, stream, batch),
            )
        if bootstrap is None or not config.pipeline:
            continue
        for batch in args.pipeline_batches:
            piped = run_pipeline(bootstrap, config, stream, batch)
            add(config.label, "streamtrain", "pipeline (Kafka)", batch, piped.run)
    for config in SCALED_MODELS:
        for batch in (b for b in args.batches if b > 1):  # at B = 1 it is the row above
            add(
                config.label,
                "streamtrain",
                "in-process",
                batch,
                run_in_process(config, stream, batch),
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows: list[Row] = []
    stream_notes: list[tuple[str, str, int]] = []
    broker = None if args.no_pipeline else EmbeddedBroker().start()
    try:
        for name in args.streams:
            stream = build_stream(name, stream_size(name, args))
            print(
                f"{name}: {stream.size} samples, {stream.feature_count} features",
                file=sys.stderr,
                flush=True,
            )
            stream_notes.append((name, stream.description, stream.size))
            rows += bench_stream(stream, args, broker.bootstrap_servers if broker else None)
    finally:
        if broker is not None:
            broker.stop()
    head = header(args.threads, load_before, os.getloadavg()[0], time.perf_counter() - started)
    report = render(rows, stream_notes, head, NOTES)
    print(report)
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
        print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
