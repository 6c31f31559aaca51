"""How the defaults were chosen: candidate optimizer settings over the whole suite, one run.

Every candidate is one configuration for every stream (no per-stream tuning). Each runs
``linear`` and ``mlp`` at micro-batch 1 and 16 on every suite stream, capped at ``--cap``
samples so the sweep stays in minutes; river's linear model and the trivial baseline
run on the same samples as the yardsticks (the baseline is the majority class so far, or the
running mean of the targets). A candidate is judged by its worst case first
(streams where it falls below the baseline or below river's linear model), then by how much
batch 16 loses against batch 1.

Usage::

    .venv/bin/python bench/peers_defaults.py            # ~10 min on 2 cores
    .venv/bin/python bench/peers_defaults.py --cap 1000 --streams wine diabetes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peers_inprocess import ModelConfig, run_in_process
from peers_river import BASELINE_NAME, LINEAR_NAME, PEERS, run_peer
from peers_suite import BUILDERS, SIZES, build_stream
from peers_verdict import better_or_equal, signed_gap


@dataclass(frozen=True)
class Candidate:
    """One default configuration to try: optimizer overrides and bench-only variants.

    ``batch1_as`` names the candidate whose batch-1 run this one equals (it only differs
    in how batches larger than one are stepped), so that run is not repeated.
    """

    tag: str
    optimizer: dict[str, object]
    sqrt_batch_lr: bool = False
    schedule_free: bool = False
    batch1_as: str | None = None

    def config(self, model: str) -> ModelConfig:
        return ModelConfig(
            model, self.tag, dict(self.optimizer), {}, self.sqrt_batch_lr, self.schedule_free
        )


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("adam 1e-3, batch steps", {"lr": 1e-3, "step_samples": "batch"}),
    Candidate("adam 3e-3, batch steps", {"lr": 3e-3, "step_samples": "batch"}),
    Candidate("adam 1e-2, batch steps", {"lr": 1e-2, "step_samples": "batch"}),
    Candidate(
        "schedule-free adamw 1e-2, batch steps",
        {"lr": 1e-2, "step_samples": "batch"},
        schedule_free=True,
    ),
    Candidate(
        "adam 1e-2 x sqrt(B), batch steps",
        {"lr": 1e-2, "step_samples": "batch"},
        sqrt_batch_lr=True,
        batch1_as="adam 1e-2, batch steps",
    ),
    Candidate(
        "adam 3e-3, auto steps",
        {"lr": 3e-3, "step_samples": "auto"},
        batch1_as="adam 3e-3, batch steps",
    ),
    Candidate(
        "adam 1e-2, auto steps",
        {"lr": 1e-2, "step_samples": "auto"},
        batch1_as="adam 1e-2, batch steps",
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--cap", type=int, default=1_500, help="samples per stream at most")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--cache",
        type=Path,
        nargs="+",
        default=[],
        help="JSON-lines files: streams found in any are not rerun; the first gets new ones",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    yardsticks: dict[str, tuple[float, float, bool]] = {}
    results: dict[tuple[str, str, int, str], float] = {}
    for path in args.cache:
        for line in path.read_text().splitlines() if path.exists() else []:
            done = json.loads(line)
            if done["cap"] == args.cap:
                yardsticks[done["stream"]] = tuple(done["yardsticks"])
                results.update({tuple(key): value for key, value in done["results"]})
    for name in args.streams:
        if name in yardsticks:
            continue
        stream = build_stream(name, min(SIZES[name], args.cap))
        rows = stream.as_dicts()
        river = next(p for p in PEERS if p.name == LINEAR_NAME)
        baseline = next(p for p in PEERS if p.name == BASELINE_NAME)
        floor = run_peer(baseline, stream, rows).score
        yardsticks[name] = (run_peer(river, stream, rows).score, floor, stream.is_regression)
        for candidate in CANDIDATES:
            for model in ("linear", "mlp"):
                for batch in args.batches:
                    if candidate.batch1_as is not None and batch == 1:
                        continue  # the same run as its twin's
                    score = run_in_process(candidate.config(model), stream, batch).score
                    results[(candidate.tag, model, batch, name)] = score
        if args.cache:
            mine = [[list(key), value] for key, value in results.items() if key[3] == name]
            record = {"cap": args.cap, "stream": name, "yardsticks": yardsticks[name]}
            with args.cache[0].open("a") as cache:
                cache.write(json.dumps({**record, "results": mine}) + "\n")
        print(f"{name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    print(render(results, yardsticks, args))
    return 0


def render(
    results: dict[tuple[str, str, int, str], float],
    yardsticks: dict[str, tuple[float, float, bool]],
    args: argparse.Namespace,
) -> str:
    names = [name for name in args.streams if name in yardsticks]
    lines = [
        f"Candidates over {len(names)} streams (at most {args.cap} samples each), score = "
        "accuracy (classification) or MAE (regression, lower is better).",
        "",
        "| candidate | model | batch | ≥ river linear | ≥ baseline | worst gap to river linear "
        "(stream) | B16 − B1 worst |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for candidate in CANDIDATES:
        tag, one_tag = candidate.tag, candidate.batch1_as or candidate.tag
        for model in ("linear", "mlp"):
            for batch in args.batches:
                if (tag, model, batch, names[0]) not in results:
                    continue
                ge_river = ge_base = 0
                worst, worst_at = 0.0, "–"
                drops = []
                for name in names:
                    score = results[(tag, model, batch, name)]
                    river, floor, reg = yardsticks[name]
                    ge_river += better_or_equal(score, river, reg)
                    ge_base += better_or_equal(score, floor, reg)
                    gap = signed_gap(score, river, reg)
                    if gap < worst:
                        worst, worst_at = gap, name
                    if batch != 1 and (one_tag, model, 1, name) in results:
                        drops.append(signed_gap(score, results[(one_tag, model, 1, name)], reg))
                drop = f"{min(drops):+.3f}" if drops else "–"
                lines.append(
                    f"| {tag} | {model} | {batch} | {ge_river}/{len(names)} | "
                    f"{ge_base}/{len(names)} | {worst:+.3f} ({worst_at}) | {drop} |"
                )
    lines += ["", "Per stream (batch 1 / batch 16):", ""]
    lines.append("| candidate | model | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---:|" * len(names))
    lines.append(
        "| river linear / baseline | | "
        + " | ".join(f"{yardsticks[n][0]:.3f} / {yardsticks[n][1]:.3f}" for n in names)
        + " |"
    )
    for candidate in CANDIDATES:
        tag = candidate.tag
        for model in ("linear", "mlp"):
            cells = []
            for n in names:
                one = results.get((tag, model, 1, n))
                sixteen = results.get((tag, model, 16, n))
                cells.append(" / ".join("–" if v is None else f"{v:.3f}" for v in (one, sixteen)))
            lines.append(f"| {tag} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
