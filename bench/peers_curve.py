"""Rolling prequential score over a stream, and one PNG per stream with every learner on it.

>>> rolling([1.0, 0.0] * 100, points=4)  # from the first sample on, then 50-sample windows
[1.0, 0.5, 0.5, 0.5]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

POINTS = 200


def rolling(scores: Sequence[float], points: int = POINTS) -> list[float]:
    """The mean of the last ``window`` per-sample scores (a twentieth of the stream, at least
    50 samples), read at ``points`` evenly spaced positions: small enough to keep in the rows'
    JSON, fine enough to show when a learner falls behind."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return []
    window = max(50, values.size // 20)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.unique(np.linspace(1, values.size, min(points, values.size)).round().astype(int))
    starts = np.maximum(ends - window, 0)
    return [float(v) for v in (sums[ends] - sums[starts]) / (ends - starts)]


def plot_stream(
    stream: str,
    samples: int,
    regression: bool,
    curves: Sequence[tuple[str, list[float]]],
    path: Path,
) -> None:
    """Every learner's rolling score on one axis (accuracy, or MAE for regression)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=80)
    for title, curve in curves:
        if not curve:
            continue
        x = np.linspace(samples / len(curve), samples, len(curve))
        streamtrain = title.startswith("streamtrain")
        style = "-" if streamtrain else "--"
        width = 2.0 if "auto" in title else 1.0
        ax.plot(x, curve, style, linewidth=width, label=title.removeprefix("streamtrain "))
    window = max(50, samples // 20)
    measure = "MAE (lower is better)" if regression else "accuracy"
    ax.set_title(f"{stream}: rolling prequential {measure}, last {window} samples")
    ax.set_xlabel("samples")
    ax.set_ylabel(measure)
    ax.grid(alpha=0.3)
    if regression:
        ax.set_yscale("log")
    ax.legend(fontsize=6, loc="best", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
