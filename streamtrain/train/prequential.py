"""Rolling prequential (test-then-train) metrics over roughly the last ``window`` samples."""

from __future__ import annotations

import math
from collections import deque

# running sums drift by float rounding as batches enter and leave; re-add them now and then
_RESUM_EVERY = 1024


class RollingMetrics:
    """Rolling mean loss and mean score from per-batch sums (host floats), O(1) per update.

    Keeps whole batches: the window holds the newest batches whose samples add up to at least
    ``window`` (the oldest batch leaves once the rest alone cover the window), so the span is
    between ``window`` and ``window`` plus one batch. The score is accuracy for classification
    (sum of 0/1 correctness) or mean absolute error for regression.

    >>> m = RollingMetrics(window=4)
    >>> m.update(samples=2, loss_sum=2.0, score_sum=1.0)
    >>> m.update(samples=2, loss_sum=1.0, score_sum=2.0)
    >>> m.update(samples=2, loss_sum=0.0, score_sum=2.0)
    >>> m.loss, m.score, m.window_samples, m.samples_seen
    (0.25, 1.0, 4, 6)
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 sample, got {window}")
        self.window = window
        self.samples_seen = 0  # cumulative, never windowed
        self.batches_seen = 0
        self._batches: deque[tuple[int, float, float]] = deque()
        self._samples = 0
        self._loss = 0.0
        self._score = 0.0
        self._evictions = 0

    def update(self, samples: int, loss_sum: float, score_sum: float) -> None:
        """Add one batch: its sample count, summed per-sample loss and summed score.

        A batch with a non-finite loss (a skipped step) is not added to the window, so one
        bad batch cannot turn the rolling loss into NaN for the next ``window`` samples; its
        samples still count in ``samples_seen``.
        """
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        self.samples_seen += samples
        self.batches_seen += 1
        if samples == 0 or not (math.isfinite(loss_sum) and math.isfinite(score_sum)):
            return
        self._batches.append((samples, loss_sum, score_sum))
        self._samples += samples
        self._loss += loss_sum
        self._score += score_sum
        while self._samples - self._batches[0][0] >= self.window:
            old_samples, old_loss, old_score = self._batches.popleft()
            self._samples -= old_samples
            self._loss -= old_loss
            self._score -= old_score
            self._evictions += 1
            if self._evictions % _RESUM_EVERY == 0:
                self._loss = math.fsum(b[1] for b in self._batches)
                self._score = math.fsum(b[2] for b in self._batches)

    @property
    def window_samples(self) -> int:
        """Samples the rolling figures are computed over right now."""
        return self._samples

    @property
    def loss(self) -> float:
        """Rolling mean loss per sample; NaN before the first batch."""
        return self._loss / self._samples if self._samples else math.nan

    @property
    def score(self) -> float:
        """Rolling mean score per sample (accuracy or MAE); NaN before the first batch."""
        return self._score / self._samples if self._samples else math.nan

    def reset(self) -> None:
        """Forget the window (e.g. after a rollback); cumulative counts are kept."""
        self._batches.clear()
        self._samples = 0
        self._loss = 0.0
        self._score = 0.0
