"""The trainer's own samples-per-second gauge."""

from __future__ import annotations

from collections.abc import Callable

from streamtrain import metrics


class ThroughputGauge:
    """Samples per second over the last few seconds, exported as a gauge; fed on every loop
    iteration (0 samples when none came), so an idle trainer's gauge falls to 0."""

    def __init__(self, clock: Callable[[], float], period: float = 2.0) -> None:
        self._clock = clock
        self._period = period
        self._since = clock()
        self._count = 0

    def add(self, samples: int) -> None:
        self._count += samples
        elapsed = self._clock() - self._since
        if elapsed >= self._period:
            metrics.TRAIN_THROUGHPUT.set(self._count / elapsed)
            self._since, self._count = self._clock(), 0
