"""Comparing scores across tasks: accuracy is better when higher, MAE when lower.

>>> better_or_equal(0.91, 0.90, regression=False), better_or_equal(3.2, 3.0, regression=True)
(True, False)
>>> round(signed_gap(3.3, 3.0, regression=True), 3)  # 10% worse MAE
-0.1
"""

from __future__ import annotations


def better_or_equal(score: float, reference: float, regression: bool) -> bool:
    """Whether ``score`` is at least as good as ``reference``."""
    return score <= reference if regression else score >= reference


def signed_gap(score: float, reference: float, regression: bool) -> float:
    """``score`` minus ``reference`` as "how much better" (negative = worse): accuracy points
    for classification, the relative MAE change for regression (MAEs differ in units)."""
    if regression:
        return (reference - score) / reference if reference > 0 else 0.0
    return score - reference
