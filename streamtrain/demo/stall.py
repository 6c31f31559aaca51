"""The demo's honest numbers: a rate from counter deltas, and every stretch where training
stalled or served weights went stale.

A gauge such as ``streamtrain_train_samples_per_second`` keeps its last value when the trainer
stops stepping, so a stalled trainer would go on showing its last rate. :class:`RateMeter`
derives samples/s from ``streamtrain_train_samples_total`` over the last few seconds instead:
0 when nothing is learned. :class:`StallWatch` remembers each stretch of at least
``min_seconds`` with no intake while records waited (the trainer's consumer lag), and each
stretch with served data older than ``max_age_s`` once it had been fresh; the summary
reports them and the demo then exits non-zero.

>>> meter = RateMeter(window_s=2.0)
>>> meter.observe(0.0, 0); meter.observe(1.0, 2000); meter.observe(2.0, 4000)
>>> meter.rate
2000.0
>>> meter.observe(3.0, 4000); meter.observe(4.0, 4000)
>>> meter.rate
0.0
>>> watch = StallWatch(min_seconds=5.0, max_age_s=5.0)
>>> for t in range(0, 20):
...     trained = 1000 * min(t, 8)
...     watch.observe(float(t), trained, lag=2000.0 * max(0, t - 8), data_age=0.5)
>>> watch.lines("broker.log")
['training stalled for 11 s (t=8-19 s) while 22,000 records waited; see broker.log']
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


class RateMeter:
    """Per-second rate of a counter over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._window = window_s
        self._points: deque[tuple[float, float]] = deque()

    def observe(self, t: float, total: float) -> None:
        self._points.append((t, total))
        while len(self._points) > 2 and t - self._points[1][0] >= self._window:
            self._points.popleft()

    @property
    def rate(self) -> float | None:
        """None until two points are known."""
        if len(self._points) < 2:
            return None
        (t0, v0), (t1, v1) = self._points[0], self._points[-1]
        return max(0.0, v1 - v0) / (t1 - t0) if t1 > t0 else None


@dataclass
class Stretch:
    start: float
    end: float
    worst: float  # records waiting (stall) or data age in seconds (stale)

    @property
    def seconds(self) -> float:
        return self.end - self.start


class StallWatch:
    """Stretches of no intake while records waited, and of served data older than a limit."""

    def __init__(self, min_seconds: float = 5.0, max_age_s: float = 5.0) -> None:
        self.min_seconds = min_seconds
        self.max_age_s = max_age_s
        self.stalls: list[Stretch] = []
        self.stale: list[Stretch] = []
        self._last_trained: float | None = None
        self._last_t = 0.0
        self._stall: Stretch | None = None
        self._old: Stretch | None = None
        self._fresh_once = False

    def observe(self, t: float, trained: float, lag: float, data_age: float | None) -> None:
        """One tick: ``trained`` the trainer's sample counter, ``lag`` its consumer lag,
        ``data_age`` the served data age (None before the first snapshot went live)."""
        learned = self._last_trained is not None and trained > self._last_trained
        started = trained > 0
        self._last_trained = trained
        previous, self._last_t = self._last_t, t
        if started and not learned and lag > 0:
            if self._stall is None:
                # The last intake was at the previous tick: the stall began there.
                self._stall = Stretch(previous, t, lag)
                self.stalls.append(self._stall)
            self._stall.end, self._stall.worst = t, max(self._stall.worst, lag)
        else:
            self._stall = None
        # A start on a busy machine serves a backlog's old data first: staleness counts once
        # the served data has been fresh, so only a pipeline that falls behind is reported.
        if data_age is not None and data_age <= self.max_age_s:
            self._fresh_once = True
        if self._fresh_once and data_age is not None and data_age > self.max_age_s:
            if self._old is None:
                self._old = Stretch(t, t, data_age)
                self.stale.append(self._old)
            self._old.end, self._old.worst = t, max(self._old.worst, data_age)
        else:
            self._old = None

    def _long(self, stretches: list[Stretch]) -> list[Stretch]:
        return [s for s in stretches if s.seconds >= self.min_seconds]

    @property
    def healthy(self) -> bool:
        return not self._long(self.stalls) and not self._long(self.stale)

    def lines(self, broker_log: str) -> list[str]:
        """One line per stretch worth reporting (none on a healthy run)."""
        out = [
            f"training stalled for {s.seconds:.0f} s (t={s.start:.0f}-{s.end:.0f} s) while "
            f"{s.worst:,.0f} records waited; see {broker_log}"
            for s in self._long(self.stalls)
        ]
        out += [
            f"served data older than {self.max_age_s:.0f} s for {s.seconds:.0f} s "
            f"(t={s.start:.0f}-{s.end:.0f} s, up to {s.worst:.0f} s)"
            for s in self._long(self.stale)
        ]
        return out
