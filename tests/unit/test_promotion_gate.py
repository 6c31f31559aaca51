"""The promotion gate's rules, and River's detectors on a loss that jumps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamtrain.metrics import TRAINER_REGISTRY
from streamtrain.train.promotion_gate import PromotionGate


def _held(reason: str) -> float:
    value = TRAINER_REGISTRY.get_sample_value(
        "streamtrain_train_held_snapshots_total", {"reason": reason}
    )
    return value or 0.0


def test_regressions_beyond_the_tolerance_are_held_against_the_last_published() -> None:
    gate = PromotionGate(tolerance=0.2)
    before = _held("regressed"), _held("non_finite")
    assert gate.admit(1, loss=1.0, score=0.5)  # first: published, the reference
    assert gate.admit(2, loss=1.19, score=0.5)  # within 20 %: published, new reference
    assert not gate.admit(3, loss=1.5, score=0.4)  # 26 % above 1.19: held
    assert gate.admit(4, loss=1.4, score=0.45)  # 17.6 % above 1.19 (not above the held 1.5)
    assert not gate.admit(5, loss=math.nan, score=0.5)
    assert not gate.admit(6, loss=0.5, score=math.inf)
    assert (_held("regressed"), _held("non_finite")) == (before[0] + 1, before[1] + 2)


def test_off_publishes_everything_and_bad_tolerance_is_refused() -> None:
    gate = PromotionGate(tolerance=None)
    assert gate.admit(1, 0.1, 1.0) and gate.admit(2, 100.0, 0.0) and gate.admit(3, math.nan, 0)
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        PromotionGate(tolerance=-0.1)


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_drift_detectors_fire_on_a_jump_in_the_loss(detector: str) -> None:
    before = TRAINER_REGISTRY.get_sample_value("streamtrain_train_drift_events_total") or 0.0
    gate = PromotionGate(tolerance=None, detector=detector)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    steady = [gate.observe(float(v)) for v in rng.normal(0.2, 0.02, 500)]
    jumped = [gate.observe(float(v)) for v in rng.normal(0.7, 0.02, 500)]
    assert not any(steady), "no drift while the loss is steady"
    assert any(jumped[:200]), "the jump is detected within 200 batches"
    after = TRAINER_REGISTRY.get_sample_value("streamtrain_train_drift_events_total")
    assert after == before + sum(jumped)
