"""The served-quality promotion rule: no decision below min_rows or inside the margin;
promote the lower loss, roll back the higher, at the stated z (welch) or level (msprt); and
under continuous monitoring of A/A streams the mixture SPRT keeps its stated error rate
while a fixed z does not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamtrain.quality.promotion import ArmLoss, PromotionRule, decide, msprt_boundary


def _arm(losses: np.ndarray) -> ArmLoss:
    return ArmLoss(len(losses), float(losses.sum()), float((losses**2).sum()))


def test_decisions_follow_the_welch_z_and_the_margin() -> None:
    rng = np.random.default_rng(3)
    live = rng.normal(0.70, 0.2, 2000)
    better = rng.normal(0.60, 0.2, 2000)
    rule = PromotionRule(min_rows=500, margin=0.0, z=3.0, test="welch")
    verdict = decide(rule, _arm(live), _arm(better))
    se = math.sqrt(live.var(ddof=1) / 2000 + better.var(ddof=1) / 2000)
    assert verdict.decision == "promote"
    assert verdict.z == pytest.approx((live.mean() - better.mean()) / se, rel=1e-9)
    assert decide(rule, _arm(better), _arm(live)).decision == "rollback"
    # a margin larger than the difference: no decision either way
    wide = PromotionRule(min_rows=500, margin=0.2, z=3.0, test="welch")
    assert decide(wide, _arm(live), _arm(better)).decision is None


def test_no_decision_below_min_rows_or_between_equal_arms() -> None:
    rng = np.random.default_rng(4)
    rule = PromotionRule(min_rows=500, margin=0.0, z=3.0, test="welch")
    few = decide(rule, _arm(rng.normal(1.0, 0.1, 499)), _arm(rng.normal(0.1, 0.1, 2000)))
    assert few.decision is None and math.isnan(few.z)
    same = decide(rule, _arm(rng.normal(0.5, 0.2, 3000)), _arm(rng.normal(0.5, 0.2, 3000)))
    assert same.decision is None


def _log_losses(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Per-row log losses of a calibrated binary model, heavy right tail included."""
    q = rng.uniform(0.02, 0.98, shape)
    return np.where(rng.random(shape) < q, -np.log(q), -np.log1p(-q))


def _ever_decided(rule: PromotionRule, live: np.ndarray, cand: np.ndarray) -> float:
    """The share of streams (rows) on which some look, every 50 rows per arm, decides."""
    sums = [np.cumsum(a, axis=1) for a in (live, cand)]
    squares = [np.cumsum(a * a, axis=1) for a in (live, cand)]
    decided = 0
    for s in range(live.shape[0]):
        for n in range(100, live.shape[1] + 1, 50):
            arms = [
                ArmLoss(n, float(sums[i][s, n - 1]), float(squares[i][s, n - 1])) for i in (0, 1)
            ]
            if decide(rule, *arms).decision is not None:
                decided += 1
                break
    return decided / live.shape[0]


def test_msprt_keeps_its_alpha_under_continuous_monitoring_where_a_fixed_z_does_not() -> None:
    rng = np.random.default_rng(20)
    streams, rows = 400, 3000
    live, cand = _log_losses(rng, (streams, rows)), _log_losses(rng, (streams, rows))
    alpha = 0.05
    msprt = _ever_decided(PromotionRule(min_rows=100, test="msprt", alpha=alpha), live, cand)
    slack = 3 * math.sqrt(alpha * (1 - alpha) / streams)  # Monte Carlo error of the estimate
    assert msprt <= alpha + slack
    # z = 2: 4.6 % two-sided for one look; 59 looks take it far past that
    welch = _ever_decided(PromotionRule(min_rows=100, test="welch", z=2.0), live, cand)
    assert welch > 2 * 0.0455 and welch > msprt


def test_msprt_decides_a_real_difference_and_its_boundary_follows_the_formula() -> None:
    rng = np.random.default_rng(21)
    live = rng.normal(0.70, 0.2, 3000)
    better = rng.normal(0.65, 0.2, 3000)
    rule = PromotionRule(min_rows=500, test="msprt", alpha=0.01, tau=0.1)
    verdict = decide(rule, _arm(live), _arm(better))
    assert verdict.decision == "promote"
    assert decide(rule, _arm(better), _arm(live)).decision == "rollback"
    se2 = live.var(ddof=1) / 3000 + better.var(ddof=1) / 3000
    tau2 = 0.01 * (live.var(ddof=1) + better.var(ddof=1)) / 2
    r = tau2 / se2
    # Λ = sqrt(se²/(se²+τ²)) exp(z² r / (2(1+r))) reaches 1/alpha exactly at the boundary
    boundary = verdict.boundary
    assert boundary == pytest.approx(msprt_boundary(0.01, r), rel=1e-12)
    ratio = math.sqrt(1 / (1 + r)) * math.exp(boundary**2 * r / (2 * (1 + r)))
    assert ratio == pytest.approx(1 / 0.01, rel=1e-9)
    assert boundary > 3.0  # stricter than one look at z = 3 asks
