"""The markdown report: environment header, accuracy matrix, per-stream tables with ratios.

>>> row = Row("s", "last label", "baseline", "one at a time", None, 0.5, 1e6)
>>> fmt_rate(row.samples_per_second)
'1.00M'
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

import torch

PACKAGES = ("streamtrain", "torch", "river", "deep-river", "numpy", "scikit-learn", "kafka-python")


@dataclass(frozen=True)
class Row:
    """One learner on one stream."""

    stream: str
    learner: str
    family: str  # baseline | river | deep-river | streamtrain
    mode: str  # one at a time | in-process | pipeline (Kafka)
    batch: int | None
    accuracy: float
    samples_per_second: float

    @property
    def title(self) -> str:
        if self.family != "streamtrain":
            return self.learner
        return f"streamtrain {self.learner}, {self.mode}, batch {self.batch}"


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
        "# streamtrain vs River and deep-river: prequential accuracy and throughput",
        "",
        f"- Date: {now}; whole bench took {wall_seconds / 60:.1f} min",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"torch threads {threads} (`torch.set_num_threads`); 1-min load average "
        f"{load_before:.1f} at start, {load_after:.1f} at end (shared machine: throughput is "
        "indicative, accuracy is exact and reproducible)",
        f"- Packages: {versions()}; torch build {torch.__version__}",
        "",
    ]


def accuracy_matrix(rows: Sequence[Row], streams: Sequence[str]) -> list[str]:
    learners = list(dict.fromkeys(r.title for r in rows))
    cell = {(r.title, r.stream): r.accuracy for r in rows}
    lines = [
        "| learner | " + " | ".join(streams) + " |",
        "|---|" + "---:|" * len(streams),
    ]
    for learner in learners:
        values = []
        for stream in streams:
            acc = cell.get((learner, stream))
            best = max((r.accuracy for r in rows if r.stream == stream), default=0.0)
            text = "–" if acc is None else f"{acc:.3f}"
            values.append(f"**{text}**" if acc is not None and acc == best else text)
        lines.append(f"| {learner} | " + " | ".join(values) + " |")
    return lines


def stream_table(rows: Sequence[Row], stream: str) -> list[str]:
    """All learners on one stream, with ratios to the most accurate river learner on it."""
    mine = [r for r in rows if r.stream == stream]
    river = [r for r in mine if r.family == "river"]
    ref = max(river, key=lambda r: r.accuracy) if river else None
    lines = []
    if ref is not None:
        lines.append(
            f"Ratios are to the most accurate river learner here, {ref.learner} "
            f"({ref.accuracy:.3f}, {fmt_rate(ref.samples_per_second)} samples/s)."
        )
        lines.append("")
    lines += [
        "| learner | mode | batch | accuracy | samples/s | acc ÷ river | speed ÷ river |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in mine:
        acc_ratio = speed_ratio = "–"
        if ref is not None and r.family in ("streamtrain", "deep-river"):
            acc_ratio = f"{r.accuracy / ref.accuracy:.2f}"
            speed_ratio = f"{r.samples_per_second / ref.samples_per_second:.2f}×"
        batch = "1" if r.batch is None else str(r.batch)
        lines.append(
            f"| {r.learner} | {r.mode} | {batch} | {r.accuracy:.3f} | "
            f"{fmt_rate(r.samples_per_second)} | {acc_ratio} | {speed_ratio} |"
        )
    return lines


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
    lines += ["", "## Whole-stream prequential accuracy (best per stream in bold)", ""]
    lines += accuracy_matrix(rows, names)
    for name in names:
        lines += ["", f"## {name}", ""]
        lines += stream_table(rows, name)
    lines += ["", "## How it was measured", ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
