"""The served-quality promotion rule: no decision below min_rows or inside the margin;
promote the lower loss, roll back the higher, at the stated z."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamtrain.quality.promotion import ArmLoss, PromotionRule, decide


def _arm(losses: np.ndarray) -> ArmLoss:
    return ArmLoss(len(losses), float(losses.sum()), float((losses**2).sum()))


def test_decisions_follow_the_welch_z_and_the_margin() -> None:
    rng = np.random.default_rng(3)
    live = rng.normal(0.70, 0.2, 2000)
    better = rng.normal(0.60, 0.2, 2000)
    rule = PromotionRule(min_rows=500, margin=0.0, z=3.0)
    verdict = decide(rule, _arm(live), _arm(better))
    se = math.sqrt(live.var(ddof=1) / 2000 + better.var(ddof=1) / 2000)
    assert verdict.decision == "promote"
    assert verdict.z == pytest.approx((live.mean() - better.mean()) / se, rel=1e-9)
    assert decide(rule, _arm(better), _arm(live)).decision == "rollback"
    # a margin larger than the difference: no decision either way
    wide = PromotionRule(min_rows=500, margin=0.2, z=3.0)
    assert decide(wide, _arm(live), _arm(better)).decision is None


def test_no_decision_below_min_rows_or_between_equal_arms() -> None:
    rng = np.random.default_rng(4)
    rule = PromotionRule(min_rows=500, margin=0.0, z=3.0)
    few = decide(rule, _arm(rng.normal(1.0, 0.1, 499)), _arm(rng.normal(0.1, 0.1, 2000)))
    assert few.decision is None and math.isnan(few.z)
    same = decide(rule, _arm(rng.normal(0.5, 0.2, 3000)), _arm(rng.normal(0.5, 0.2, 3000)))
    assert same.decision is None
