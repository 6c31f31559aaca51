"""Rolling prequential metrics."""

from __future__ import annotations

import math
import random

import pytest

from streamtrain.train.prequential import RollingMetrics


def test_empty_metrics_are_nan() -> None:
    m = RollingMetrics(10)
    assert math.isnan(m.loss) and math.isnan(m.score)
    assert m.samples_seen == 0 and m.window_samples == 0


def test_window_keeps_the_newest_batches_covering_it() -> None:
    m = RollingMetrics(window=10)
    for i in range(10):
        m.update(samples=4, loss_sum=4.0 * i, score_sum=4.0 * (i % 2))
    # the newest three batches (i = 7, 8, 9) cover 12 >= 10 samples; dropping 7 would leave 8
    assert m.window_samples == 12
    assert m.loss == pytest.approx((7 + 8 + 9) / 3)
    assert m.score == pytest.approx((1 + 0 + 1) / 3)
    assert m.samples_seen == 40 and m.batches_seen == 10


def test_matches_a_brute_force_window_over_a_long_stream() -> None:
    rng = random.Random(3)
    m = RollingMetrics(window=50)
    batches: list[tuple[int, float, float]] = []
    for _ in range(5000):
        n = rng.randint(1, 20)
        batch = (n, rng.random() * n * 1e3, float(rng.randint(0, n)))
        batches.append(batch)
        m.update(*batch)
    kept: list[tuple[int, float, float]] = []
    for batch in reversed(batches):
        if sum(b[0] for b in kept) >= 50:
            break
        kept.append(batch)
    total = sum(b[0] for b in kept)
    assert m.window_samples == total
    assert m.loss == pytest.approx(sum(b[1] for b in kept) / total, rel=1e-9)
    assert m.score == pytest.approx(sum(b[2] for b in kept) / total, rel=1e-9)


def test_non_finite_batches_are_counted_but_not_averaged() -> None:
    m = RollingMetrics(window=100)
    m.update(samples=10, loss_sum=5.0, score_sum=8.0)
    m.update(samples=10, loss_sum=math.nan, score_sum=3.0)
    assert m.loss == 0.5 and m.score == 0.8
    assert m.samples_seen == 20


def test_reset_keeps_cumulative_counts() -> None:
    m = RollingMetrics(window=100)
    m.update(samples=10, loss_sum=5.0, score_sum=8.0)
    m.reset()
    assert math.isnan(m.loss) and m.samples_seen == 10


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        RollingMetrics(0)
    with pytest.raises(ValueError, match="samples"):
        RollingMetrics(5).update(-1, 0.0, 0.0)
