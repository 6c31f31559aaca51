"""streamtrain vs River on a broad suite: the same streams, one run, one machine.

For every stream of the suite (``peers_suite.py``: 18 streams, classification and
regression), each learner is evaluated prequentially (test, then train) over the whole stream:
river's linear model (+StandardScaler), Hoeffding Adaptive Tree and ARF, and two trivial
baselines one sample at a time; streamtrain's default ``auto`` and the ``linear`` and ``mlp``
it combines, with the CLI defaults, in-process at micro-batches 1 and 16 (the same ``Learner``
the trainer runs), plus ``auto`` draining a backlog in batches of 256 with the default step
rule. ``--pipeline`` adds runs through the real trainer (embedded broker, binary producer,
``build_trainer``). Writes a markdown report to stdout and ``bench/results/peers.md``, and one
PNG per stream of every learner's rolling prequential score to ``bench/results/peers_plots/``.

Usage::

    .venv/bin/python bench/peers.py                  # the full suite, ~20 min on 2 busy cores
    .venv/bin/python bench/peers.py --quick          # 500 samples per stream, no file written
    .venv/bin/python bench/peers.py --streams wine diabetes --pipeline
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
from peers_curve import plot_stream
from peers_inprocess import DEFAULTS, ModelConfig, run_in_process
from peers_report import Row, header, render
from peers_river import ARF_MODELS, PEERS, RunResult, run_peer
from peers_streams import Stream
from peers_suite import BUILDERS, SIZES, build_stream

RESULTS = Path(__file__).resolve().parent / "results" / "peers.md"
PLOTS = RESULTS.parent / "peers_plots"
BACKLOG = ModelConfig("auto")  # the default model draining a backlog
BACKLOG_BATCH = 256

NOTES = (
    "Prequential: each sample is predicted by the model as it stands, scored, then learned "
    "from. streamtrain with a fetched micro-batch of B scores each optimizer step's samples "
    "with the weights before that step (`Learner.learn`); with the default "
    "`step_samples: auto` a batch is split into steps of at most 2^(s/256) samples (s = "
    "steps taken so far), with `batch` it is one step.",
    "Score over the whole stream, every sample counted: accuracy, or mean absolute error for "
    "regression (RMSE in its own table). samples/s is the learner's time only (predict + "
    "learn); building the stream, river's dicts and the RMSE forward are not timed.",
    "streamtrain rows use the settings a CLI user gets (`load_settings()` with only the model "
    "name, task and input shape set): model params, optimizer, learning rate, step rule, "
    "standardisation of features and (regression) targets are the defaults.",
    f"river: defaults (LogisticRegression or LinearRegression behind StandardScaler, "
    f"OneVsRest for multiclass; HoeffdingAdaptiveTree; ARF) except ARF's ensemble size, "
    f"{ARF_MODELS} trees instead of 10 so the suite fits in minutes on 2 cores. Same seed (7) "
    "everywhere.",
    "Baselines: the majority class so far (classification) or the running mean of the "
    "targets (regression) is the goal's trivial baseline; last label / last value is shown "
    "too (persistence, strong on smooth series such as trump_approval).",
    "Goal-table gaps are 'how much better' (negative = worse): accuracy points for "
    "classification, relative MAE change for regression.",
    "A backlog row (batch 256) is the default model draining a stream in batches of 256 with "
    "the default step rule.",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--pipeline", action="store_true", help="also run through Kafka")
    parser.add_argument("--quick", action="store_true", help="500 samples, report not saved")
    parser.add_argument(
        "--max-samples", type=int, help="cap every stream at this many samples (a busy machine)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--rows-out", type=Path, help="also save the measured rows (JSON)")
    parser.add_argument(
        "--from-rows",
        type=Path,
        nargs="+",
        help="measure nothing: render the report from rows saved by runs split over processes",
    )
    return parser.parse_args(argv)


def load_rows(paths: list[Path]) -> tuple[list[Row], list[tuple[str, str, int]], list[str]]:
    """Rows, stream notes and headers of saved runs, in the order given; a stream measured
    again in a later file replaces the earlier run's rows (a rerun of part of the suite)."""
    rows: list[Row] = []
    notes: list[tuple[str, str, int]] = []
    heads: list[str] = []
    for path in paths:
        saved = json.loads(path.read_text())
        again = {name for name, _, _ in saved["streams"]}
        rows = [r for r in rows if r.stream not in again]
        notes = [note for note in notes if note[0] not in again]
        rows += [Row(**row) for row in saved["rows"]]
        notes += [(name, desc, n) for name, desc, n in saved["streams"]]
        heads += saved["header"]
    order = [name for name, _, _ in notes]
    return sorted(rows, key=lambda r: order.index(r.stream)), notes, heads


def progress(row: Row) -> None:
    print(
        f"  {row.title:70s} {row.score:.3f}  {row.samples_per_second:10.0f} samples/s",
        file=sys.stderr,
        flush=True,
    )


def bench_stream(stream: Stream, args: argparse.Namespace, bootstrap: str | None) -> list[Row]:
    rows: list[Row] = []
    reg = stream.is_regression

    def add(name: str, family: str, how: str, batch: int | None, result: RunResult) -> None:
        rows.append(
            Row(
                stream.name,
                name,
                family,
                how,
                batch,
                result.score,
                result.rmse,
                result.samples_per_second,
                reg,
                result.curve,
            )
        )
        progress(rows[-1])

    dicts = stream.as_dicts()
    for peer in PEERS:
        add(peer.name, peer.family, "one at a time", None, run_peer(peer, stream, dicts))
    for config in DEFAULTS:
        for batch in args.batches:
            add(
                config.label,
                "streamtrain",
                "in-process",
                batch,
                run_in_process(config, stream, batch),
            )
    backlog = run_in_process(BACKLOG, stream, BACKLOG_BATCH)
    add(BACKLOG.label, "streamtrain", "in-process", BACKLOG_BATCH, backlog)
    if bootstrap is not None:
        from peers_pipeline import run_pipeline

        for config in DEFAULTS:
            piped = run_pipeline(bootstrap, config, stream, 16)
            add(config.label, "streamtrain", "pipeline (Kafka)", 16, piped.run)
    return rows


def plot_all(rows: list[Row], stream_notes: list[tuple[str, str, int]], folder: Path) -> None:
    """One PNG per stream: every learner's rolling score (``peers_curve.plot_stream``)."""
    for name, _, samples in stream_notes:
        mine = [r for r in rows if r.stream == name]
        curves = [(r.title, r.curve) for r in mine]
        plot_stream(name, samples, mine[0].regression, curves, folder / f"{name}.png")
    print(f"plots in {folder}", file=sys.stderr)


def save_rows(
    args: argparse.Namespace,
    rows: list[Row],
    stream_notes: list[tuple[str, str, int]],
    started: float,
    load_before: float,
) -> None:
    head = header(args.threads, load_before, os.getloadavg()[0], time.perf_counter() - started)
    saved = {"rows": [dataclasses.asdict(r) for r in rows], "streams": stream_notes}
    args.rows_out.write_text(json.dumps({**saved, "header": head}))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_rows:
        rows, stream_notes, heads = load_rows(args.from_rows)
        head = [heads[0], "", *(line for line in heads if line.startswith("- "))]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(render(rows, stream_notes, [*head, ""], NOTES))
        print(f"written to {args.output}", file=sys.stderr)
        plot_all(rows, stream_notes, args.output.parent / PLOTS.name)
        return 0
    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows: list[Row] = []
    stream_notes: list[tuple[str, str, int]] = []
    broker = None
    if args.pipeline:
        from streamtrain.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
    try:
        for name in args.streams:
            size = 500 if args.quick else SIZES[name]
            stream = build_stream(name, min(size, args.max_samples or size))
            print(
                f"{name}: {stream.size} samples, {stream.feature_count} features, {stream.task}",
                file=sys.stderr,
                flush=True,
            )
            stream_notes.append((name, stream.description, stream.size))
            rows += bench_stream(stream, args, broker.bootstrap_servers if broker else None)
            if args.rows_out is not None:  # after every stream: a stopped run keeps its rows
                save_rows(args, rows, stream_notes, started, load_before)
    finally:
        if broker is not None:
            broker.stop()
    head = header(args.threads, load_before, os.getloadavg()[0], time.perf_counter() - started)
    report = render(rows, stream_notes, head, NOTES)
    print(report)
    if args.rows_out is not None:
        save_rows(args, rows, stream_notes, started, load_before)
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
        print(f"written to {args.output}", file=sys.stderr)
        plot_all(rows, stream_notes, args.output.parent / PLOTS.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
