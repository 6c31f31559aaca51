"""The per-row and per-window figures of served quality, one rule for the join's metrics,
the promotion policy and ``bench/ab.py``'s offline check.

A classification row's outputs are the class probabilities it was served with (binary: the
two columns for class 0 and 1); a regression row's are its values.

>>> from streamtrain.sample.spec import SampleSpec
>>> row = score_row(SampleSpec((2,), "binary"), (0.2, 0.8), 1)
>>> round(row.loss, 4), row.correct, row.score
(0.2231, 1.0, 0.8)
>>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.label_record import Label

Array = np.ndarray[Any, Any]
# A probability of 0 for the true class would make the log loss infinite; the trainer's
# cross-entropy works on logits and never meets it, a served float32 probability can.
EPSILON = 1e-7


@dataclass(frozen=True, slots=True)
class RowScore:
    """One labelled served row: its log loss (classification) or squared error
    (regression), 0/1 correctness, absolute error, and the positive-class score (binary)."""

    loss: float
    correct: float
    abs_error: float
    squared_error: float
    score: float  # binary: P(class 1); otherwise NaN
    positive: bool  # binary: the label is class 1


def score_row(spec: SampleSpec, outputs: Sequence[float], label: Label) -> RowScore:
    """Score one served row against its label (outputs as logged, label as decoded)."""
    if spec.is_classification:
        cls = int(label) if isinstance(label, int) else int(label[0])
        probs = [float(p) for p in outputs]
        p_true = probs[cls] if 0 <= cls < len(probs) else 0.0
        loss = -math.log(min(1.0, max(p_true, EPSILON)))
        # argmax's first maximum, as the served predicted_class (p = 0.5 answers class 0)
        predicted = max(range(len(probs)), key=lambda i: (probs[i], -i)) if probs else -1
        binary = spec.task == "binary" and len(probs) == 2
        return RowScore(
            loss,
            float(predicted == cls),
            math.nan,
            math.nan,
            probs[1] if binary else math.nan,
            cls == 1,
        )
    target = (float(label),) if isinstance(label, int) else tuple(float(v) for v in label)
    errors = [float(o) - t for o, t in zip(outputs, target, strict=False)]
    absolute = sum(abs(e) for e in errors) / max(1, len(errors))
    squared = sum(e * e for e in errors) / max(1, len(errors))
    return RowScore(squared, math.nan, absolute, squared, math.nan, False)


def auc(scores: Array, positives: Array) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half); NaN
    unless both classes are present."""
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # average rank of each run of equal scores
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(ranked)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[positives.astype(bool)].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class WindowFigures:
    """Served quality over one set of labelled rows."""

    rows: int
    log_loss: float  # classification; regression: NaN
    accuracy: float
    mae: float
    rmse: float
    auc: float


def summarise(spec: SampleSpec, rows: Sequence[RowScore]) -> WindowFigures:
    """The figures over ``rows`` (NaN where the task has none, or there are no rows)."""
    n = len(rows)
    if n == 0:
        return WindowFigures(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    if spec.is_classification:
        area = math.nan
        if spec.task == "binary":
            area = auc(
                np.array([r.score for r in rows]), np.array([r.positive for r in rows], bool)
            )
        return WindowFigures(
            n,
            math.fsum(r.loss for r in rows) / n,
            math.fsum(r.correct for r in rows) / n,
            math.nan,
            math.nan,
            area,
        )
    return WindowFigures(
        n,
        math.nan,
        math.nan,
        math.fsum(r.abs_error for r in rows) / n,
        math.sqrt(math.fsum(r.squared_error for r in rows) / n),
        math.nan,
    )
