"""Promotion by served quality: the rule that promotes a candidate or rolls it back.

The per-row loss is the log loss (classification) or the squared error (regression) of a
labelled served row (:mod:`streamtrain.quality.figures`). With ``n`` labelled rows on each
arm, means ``m_live``, ``m_cand`` and sample variances ``s²``, the difference
``d = m_live - m_cand`` (positive: the candidate is better) has the standard error
``se = sqrt(s²_live / n_live + s²_cand / n_cand)`` (Welch). Once both arms have at least
``min_rows`` labelled rows, with ``z = (|d| - margin) / se``:

* promote when ``d > 0`` and ``z`` reaches the boundary: the candidate's loss is lower by
  more than the margin;
* roll back when ``d < 0`` and ``z`` reaches it: higher by more than the margin;
* otherwise keep collecting.

The rule is looked at again every check as labels arrive, so its boundary is one of two tests:

* ``msprt`` (default): the mixture sequential probability ratio test (Robbins 1970; Johari,
  Pekelis and Walsh, "Always valid inference", 2017), whose error rate holds however often
  it is looked at. With the Gaussian mixture ``N(0, tau_abs²)`` over the true difference,
  the likelihood ratio of ``d`` is ``Λ = sqrt(se² / (se² + tau_abs²)) · exp(z² r / (2 (1 + r)))``,
  ``r = tau_abs² / se²``, and a decision needs ``Λ >= 1 / alpha``, i.e.
  ``z² >= (1 + r) / r · (2 ln(1 / alpha) + ln(1 + r))``: a boundary that grows slowly with
  the rows. By Ville's inequality the chance that it is *ever* crossed in a direction whose
  true difference is within the margin is at most ``alpha`` (with the plug-in ``se``:
  approximately, measured by ``bench/ab_aa.py``). ``tau`` is the mixture's scale in units of
  the per-row loss's standard deviation (``tau_abs = tau · sqrt((s²_live + s²_cand) / 2)``):
  the effect size it decides fastest on.
* ``welch``: a fixed ``z`` (default 3, 0.13 % one-sided for one look). Looked at repeatedly
  its error rate climbs well above that figure (``bench/ab_aa.py`` measures it).

Shadow rows pair with the live rows of the same requests; both tests ignore that pairing,
which only makes them more conservative when the arms correlate.

>>> rule = PromotionRule(min_rows=3, margin=0.0, z=2.0, test="welch")
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
SequentialTest = Literal["msprt", "welch"]
DECISIONS: tuple[Decision, ...] = ("promote", "rollback")


@dataclass(frozen=True)
class PromotionRule:
    min_rows: int = 500
    margin: float = 0.0
    z: float = 3.0  # welch's boundary
    test: SequentialTest = "msprt"
    alpha: float = 0.01  # msprt: the error rate under continuous monitoring, per direction
    tau: float = 0.1  # msprt: the mixture's scale, in per-row loss standard deviations


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
    boundary: float = math.nan  # the z a decision needed at this look

    def evidence(self) -> str:
        return (
            f"live {self.live.rows} rows, mean loss {self.live.mean:.6g}; candidate "
            f"{self.candidate.rows} rows, mean loss {self.candidate.mean:.6g}; "
            f"difference {self.difference:.6g}, z {self.z:.3g} (boundary {self.boundary:.3g})"
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
    boundary = rule.z if rule.test == "welch" else _msprt_boundary(rule, live, candidate, se)
    decision: Decision | None = None
    if z > 0.0 and z >= boundary:
        decision = "promote" if difference > 0 else "rollback"
    return Verdict(decision, live, candidate, difference, z, boundary)


def msprt_boundary(alpha: float, r: float) -> float:
    """The z the mixture SPRT needs at level ``alpha`` when ``r = tau_abs² / se²``.

    >>> round(msprt_boundary(0.01, 1.0), 3), round(msprt_boundary(0.01, 100.0), 3)
    (4.451, 3.737)
    """
    return math.sqrt((1.0 + r) / r * (2.0 * math.log(1.0 / alpha) + math.log1p(r)))


def _msprt_boundary(rule: PromotionRule, live: ArmLoss, candidate: ArmLoss, se: float) -> float:
    if se == 0.0:
        return 0.0  # no spread: the difference is certain (z is inf or 0)
    tau_abs = rule.tau * math.sqrt((live.variance + candidate.variance) / 2.0)
    return msprt_boundary(rule.alpha, (tau_abs / se) ** 2)
