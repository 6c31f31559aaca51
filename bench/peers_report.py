"""The markdown report: environment, score matrix, goal verdicts, wins/losses, throughput.

>>> row = Row("s", "river x", "river", "one at a time", None, 0.5, None, 1e6, False)
>>> fmt_rate(row.samples_per_second), row.title
('1.00M', 'river x')
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata

import torch
from peers_river import BASELINE_NAME, LINEAR_NAME
from peers_verdict import better_or_equal, signed_gap

PACKAGES = ("streamtrain", "torch", "river", "numpy", "scikit-learn", "kafka-python")


@dataclass(frozen=True)
class Row:
    """One learner on one stream: ``score`` is accuracy, or MAE when ``regression``."""

    stream: str
    learner: str
    family: str  # baseline | river | streamtrain
    mode: str  # one at a time | in-process | pipeline (Kafka)
    batch: int | None
    score: float
    rmse: float | None
    samples_per_second: float
    regression: bool
    curve: list[float] = field(default_factory=list)  # rolling score, peers_curve.rolling

    @property
    def title(self) -> str:
        if self.family != "streamtrain":
            return self.learner
        where = "" if self.mode == "in-process" else f", {self.mode}"
        return f"streamtrain {self.learner}{where}, batch {self.batch}"


def fmt_rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def header(threads: int, load_before: float, load_after: float, wall_seconds: float) -> list[str]:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# streamtrain vs River: prequential score and throughput on a broad suite",
        "",
        f"- Date: {now}; whole bench took {wall_seconds / 60:.1f} min",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"torch threads {threads}; 1-min load average {load_before:.1f} at start, "
        f"{load_after:.1f} at end (shared machine: throughput is indicative, scores are exact "
        "and reproducible)",
        f"- Packages: {versions()}; torch build {torch.__version__}",
        "",
    ]


def _best(rows: Sequence[Row]) -> Row:
    if rows[0].regression:
        return min(rows, key=lambda r: r.score)
    return max(rows, key=lambda r: r.score)


def score_matrix(rows: Sequence[Row], streams: Sequence[str]) -> list[str]:
    """Learners x streams; accuracy, or MAE for regression streams (marked ↓); best in bold."""
    learners = list(dict.fromkeys(r.title for r in rows))
    cell = {(r.title, r.stream): r for r in rows}
    regression = {r.stream: r.regression for r in rows}
    heads = [f"{s} (MAE ↓)" if regression[s] else s for s in streams]
    lines = ["| learner | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(streams)]
    for learner in learners:
        values = []
        for stream in streams:
            row = cell.get((learner, stream))
            if row is None:
                values.append("–")
                continue
            best = _best([r for r in rows if r.stream == stream])
            text = f"{row.score:.3f}"
            values.append(f"**{text}**" if row.score == best.score else text)
        lines.append(f"| {learner} | " + " | ".join(values) + " |")
    return lines


def rmse_table(rows: Sequence[Row], streams: Sequence[str]) -> list[str]:
    reg = [s for s in streams if any(r.stream == s and r.regression for r in rows)]
    if not reg:
        return []
    learners = list(dict.fromkeys(r.title for r in rows if r.regression))
    cell = {(r.title, r.stream): r.rmse for r in rows}
    lines = ["| learner | " + " | ".join(reg) + " |", "|---|" + "---:|" * len(reg)]
    for learner in learners:
        values = [cell.get((learner, s)) for s in reg]
        lines.append(
            f"| {learner} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in values) + " |"
        )
    return lines


def goal_table(rows: Sequence[Row], streams: Sequence[str], model: str) -> list[str]:
    """Per stream, the default ``model`` at batch 1 and 16 against the yardsticks.

    Gaps are "how much better" (negative = worse): accuracy points, or relative MAE.
    """
    lines = [
        f"| stream | {model} B1 | river linear | gap | river best | gap | baseline | gap | "
        f"{model} B16 | B16 − B1 |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for stream in streams:
        mine = [r for r in rows if r.stream == stream]
        one = _find(mine, f"streamtrain {model} (defaults), batch 1")
        sixteen = _find(mine, f"streamtrain {model} (defaults), batch 16")
        if one is None:
            continue
        reg = one.regression
        river = [r for r in mine if r.family == "river"]
        linear = _find(mine, LINEAR_NAME)
        best = _best(river)
        base = _find(mine, BASELINE_NAME)
        cells = [stream, f"{one.score:.3f}"]
        for i, ref in enumerate((linear, best, base)):
            if ref is None:
                cells += ["–", "–"]
                continue
            name = f"{ref.score:.3f} ({_short(ref)})" if i == 1 else f"{ref.score:.3f}"
            cells += [name, _gap(one.score, ref.score, reg)]
        if sixteen is not None:
            cells += [f"{sixteen.score:.3f}", f"{signed_gap(sixteen.score, one.score, reg):+.3f}"]
        else:
            cells += ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def wins_table(rows: Sequence[Row], streams: Sequence[str]) -> list[str]:
    """Each streamtrain row: streams where it is at least as good as each yardstick."""
    lines = [
        "| streamtrain learner | ≥ river best | ≥ river linear | ≥ baseline | streams |",
        "|---|---:|---:|---:|---:|",
    ]
    titles = list(dict.fromkeys(r.title for r in rows if r.family == "streamtrain"))
    for title in titles:
        wins = [0, 0, 0]
        total = 0
        for stream in streams:
            mine = [r for r in rows if r.stream == stream]
            row = _find(mine, title)
            if row is None:
                continue
            total += 1
            refs = (
                _best([r for r in mine if r.family == "river"]),
                _find(mine, LINEAR_NAME),
                _find(mine, BASELINE_NAME),
            )
            for i, ref in enumerate(refs):
                wins[i] += ref is not None and better_or_equal(row.score, ref.score, row.regression)
        lines.append(
            f"| {title} | {wins[0]}/{total} | {wins[1]}/{total} | {wins[2]}/{total} | {total} |"
        )
    return lines


def rate_table(rows: Sequence[Row], streams: Sequence[str]) -> list[str]:
    learners = list(dict.fromkeys(r.title for r in rows))
    cell = {(r.title, r.stream): r.samples_per_second for r in rows}
    lines = ["| learner | " + " | ".join(streams) + " |", "|---|" + "---:|" * len(streams)]
    for learner in learners:
        values = [cell.get((learner, s)) for s in streams]
        lines.append(
            f"| {learner} | " + " | ".join("–" if v is None else fmt_rate(v) for v in values) + " |"
        )
    return lines


def _find(rows: Sequence[Row], title: str) -> Row | None:
    return next((r for r in rows if r.title == title), None)


def _short(row: Row) -> str:
    return row.learner.removeprefix("river ").split(" (")[0]


def _gap(score: float, reference: float, regression: bool) -> str:
    return f"{signed_gap(score, reference, regression):+.3f}"


def render(
    rows: Sequence[Row],
    stream_notes: Sequence[tuple[str, str, int]],
    head: Sequence[str],
    notes: Sequence[str],
) -> str:
    """The whole report; ``stream_notes`` holds (name, description, samples) per stream."""
    names = [name for name, _, _ in stream_notes]
    lines = list(head)
    lines += ["## Streams", ""]
    lines += [f"- `{name}` ({n} samples): {desc}" for name, desc, n in stream_notes]
    lines += ["", "## Whole-stream prequential score (accuracy; MAE ↓ for regression)", ""]
    lines += score_matrix(rows, names)
    rmse = rmse_table(rows, names)
    if rmse:
        lines += ["", "## Regression: whole-stream RMSE", "", *rmse]
    for model in ("auto", "mlp", "linear"):
        lines += ["", f"## Goal check: `{model}` with the CLI defaults", ""]
        lines += goal_table(rows, names, model)
    lines += ["", "## Wins and losses per streamtrain learner", "", *wins_table(rows, names)]
    lines += ["", "## Throughput, samples/s (learner time only)", "", *rate_table(rows, names)]
    lines += ["", "## How it was measured", ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
