"""Promotion by served quality: the rule that promotes a candidate or rolls it back.

The per-row loss is the log loss (classification) or the squared error (regression) of a
labelled served row (:mod:`streamtrain.quality.figures`). With ``n`` labelled rows on each
arm, means ``m_live``, ``m_cand`` and sample variances ``s²``, the difference
``d = m_live - m_cand`` (positive: the candidate is better) has the standard error
``se = sqrt(s²_live / n_live + s²_cand / n_cand)`` (Welch). Once both arms have at least
``min_rows`` labelled rows:

* promote when ``(d - margin) / se >= z``: the candidate's loss is lower by more than the
  margin, one-sided at level ``z``;
* roll back when ``(-d - margin) / se >= z``: it is higher by more than the margin;
* otherwise keep collecting.

The test is looked at again as rows arrive (a sequential use of a fixed-sample test), which
raises its error rate above the nominal one of a single look; the default ``z = 3`` (0.13 %
one-sided for one look) keeps that small, and ``min_rows`` keeps early looks from deciding
on a handful of rows. Shadow rows pair with the live rows of the same requests; the Welch
test ignores that pairing, which only makes it more conservative when the arms correlate.

>>> rule = PromotionRule(min_rows=3, margin=0.0, z=2.0)
>>> live = ArmLoss(rows=4, loss_sum=4.0, loss_squares=4.4)
>>> better = ArmLoss(rows=4, loss_sum=1.0, loss_squares=0.35)
>>> decide(rule, live, better).decision, decide(rule, better, live).decision
('promote', 'rollback')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Decision = Literal["promote", "rollback"]
DECISIONS: tuple[Decision, ...] = ("promote", "rollback")


@dataclass(frozen=True)
class PromotionRule:
    min_rows: int = 500
    margin: float = 0.0
    z: float = 3.0


@dataclass(frozen=True)
class ArmLoss:
    """Labelled rows of one arm: their count, summed loss and summed squared loss."""

    rows: int
    loss_sum: float
    loss_squares: float

    @property
    def mean(self) -> float:
        return self.loss_sum / self.rows if self.rows else math.nan

    @property
    def variance(self) -> float:
        """The sample variance of the per-row loss (0 below two rows)."""
        if self.rows < 2:
            return 0.0
        centred = self.loss_squares - self.loss_sum * self.loss_sum / self.rows
        return max(0.0, centred / (self.rows - 1))


@dataclass(frozen=True)
class Verdict:
    """A decision (None: keep collecting) and the evidence it rests on."""

    decision: Decision | None
    live: ArmLoss
    candidate: ArmLoss
    difference: float  # mean live loss - mean candidate loss
    z: float  # (|difference| - margin) / se in the direction decided, or of the better side

    def evidence(self) -> str:
        return (
            f"live {self.live.rows} rows, mean loss {self.live.mean:.6g}; candidate "
            f"{self.candidate.rows} rows, mean loss {self.candidate.mean:.6g}; "
            f"difference {self.difference:.6g}, z {self.z:.3g}"
        )


def decide(rule: PromotionRule, live: ArmLoss, candidate: ArmLoss) -> Verdict:
    """Apply ``rule`` to the two arms' labelled rows (module docstring)."""
    if min(live.rows, candidate.rows) < max(1, rule.min_rows):
        return Verdict(None, live, candidate, math.nan, math.nan)
    difference = live.mean - candidate.mean
    se = math.sqrt(live.variance / live.rows + candidate.variance / candidate.rows)
    excess = abs(difference) - rule.margin
    # no excess over the margin: no evidence; no spread at all: certain
    z = 0.0 if excess <= 0 else math.inf if se == 0.0 else excess / se
    decision: Decision | None = None
    if z >= rule.z:
        decision = "promote" if difference > 0 else "rollback"
    return Verdict(decision, live, candidate, difference, z)
