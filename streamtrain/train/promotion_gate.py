"""The promotion gate: a snapshot is published only if the model has not got worse.

The trainer asks :meth:`PromotionGate.admit` each time its snapshot cadence fires. In order:

1. the rolling prequential loss (test-then-train, over ``train.metric_window`` samples: what
   the weights about to be published scored on data they had not yet learned from) and score
   must be finite, else the snapshot is held (``non_finite``);
2. the first snapshot of a run is published and its loss becomes the reference;
3. a later one is published when its loss is at most ``reference * (1 + tolerance)`` and
   becomes the new reference; otherwise it is held (``regressed``), counted in
   ``streamtrain_train_held_snapshots_total`` and logged with both losses and scores. The
   servers keep the last published version meanwhile.

Separately, every batch's prequential loss feeds a drift detector (River's ADWIN or
Page-Hinkley, ``train.drift_detector``); each detection is counted in
``streamtrain_train_drift_events_total`` and logged. Held snapshots *with* a drift event mean
the data changed under the model (the losses will recover as it learns, or the labels went
bad); held snapshots *without* one mean the model itself got worse (a bad learning rate,
diverging weights). Drift does not open the gate: a stream whose labels turn to noise drifts
too, and publishing that model is what the gate exists to prevent.

>>> gate = PromotionGate(tolerance=0.1)
>>> gate.admit(step=10, loss=0.50, score=0.80), gate.admit(step=20, loss=0.52, score=0.79)
(True, True)
>>> gate.admit(step=30, loss=0.90, score=0.55)
False
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any, Literal, get_args

from streamtrain import metrics
from streamtrain.extras import MissingExtra

log = logging.getLogger(__name__)

DriftDetector = Literal["adwin", "page_hinkley"]
HoldReason = Literal["regressed", "non_finite"]
# At 0 from the start, gate or not: increase() then sees the first held snapshot.
metrics.export_at_zero(metrics.TRAIN_HELD_SNAPSHOTS, [(r,) for r in get_args(HoldReason)])
_RIVER_CLASSES = {"adwin": "ADWIN", "page_hinkley": "PageHinkley"}


def drift_detector(name: DriftDetector) -> Any:
    """A fresh River detector; :class:`MissingExtra` when River is not installed."""
    try:
        drift = importlib.import_module("river.drift")
    except ImportError as exc:
        raise MissingExtra("drift", "train.drift_detector", exc) from None
    return getattr(drift, _RIVER_CLASSES[name])()


class PromotionGate:
    """Rules 1-3 above, plus the drift detector on the per-batch prequential loss."""

    def __init__(self, tolerance: float | None, detector: DriftDetector | None = None) -> None:
        """``tolerance`` None turns the gate off (every snapshot is published) while the
        drift detector, if any, still runs."""
        if tolerance is not None and not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self._tolerance = tolerance
        self._detector_name = detector
        self._detector = None if detector is None else drift_detector(detector)
        self._reference: tuple[int, float, float] | None = None  # step, loss, score
        self._batches = 0

    def observe(self, loss: float) -> bool:
        """Feed one batch's mean prequential loss to the drift detector; True on drift."""
        self._batches += 1
        if self._detector is None or not math.isfinite(loss):
            return False
        self._detector.update(loss)
        if not self._detector.drift_detected:
            return False
        metrics.TRAIN_DRIFT_EVENTS.inc()
        log.warning(
            "drift in the prequential loss detected by %s at batch %d (loss now %.4g)",
            self._detector_name,
            self._batches,
            loss,
        )
        return True

    def admit(self, step: int, loss: float, score: float) -> bool:
        """Whether the snapshot of ``step`` may be published (rules 1-3)."""
        if self._tolerance is None:
            return True
        if not (math.isfinite(loss) and math.isfinite(score)):
            return self._hold("non_finite", step, loss, score)
        reference = self._reference
        # The tiny absolute term keeps a reference loss of exactly 0 from holding forever.
        if reference is not None and loss > reference[1] * (1 + self._tolerance) + 1e-12:
            return self._hold("regressed", step, loss, score)
        self._reference = (step, loss, score)
        return True

    def _hold(self, reason: HoldReason, step: int, loss: float, score: float) -> bool:
        metrics.TRAIN_HELD_SNAPSHOTS.labels(reason).inc()
        reference = self._reference
        if reference is None:
            log.warning(
                "snapshot of step %d held (%s): loss %.4g, score %.4g", step, reason, loss, score
            )
        else:
            log.warning(
                "snapshot of step %d held (%s): prequential loss %.4g (score %.4g) against "
                "%.4g (score %.4g) at step %d, the last published; tolerance %.0f%%",
                step,
                reason,
                loss,
                score,
                reference[1],
                reference[2],
                reference[0],
                (self._tolerance or 0.0) * 100,
            )
        return False
