"""Served-quality tallies per model version and arm, with bounded label cardinality.

Each (version, arm) keeps running sums since the process started (served rows, labelled
rows, summed log loss, correct rows, absolute and squared error) and a window of its newest
labelled rows by event time: those served within ``window_s`` seconds before the newest
labelled row of that tally (at most ``max_window_rows``), the served-quality analogue of the
trainer's prequential window. Only the ``keep`` newest versions have tallies of their own;
an older one is folded into the version label ``older`` (sums added, window rows merged).

>>> from streamtrain.sample.spec import SampleSpec
>>> from streamtrain.quality.figures import score_row
>>> books = VersionBooks(SampleSpec((2,), "binary"), keep=1, window_s=60.0)
>>> books.served(3, "live"); books.served(4, "live")
>>> books.labelled(3, "live", 10.0, score_row(books.spec, (0.5, 0.5), 1))
>>> sorted((r.version, r.arm) for r in books.report() if r.served)
[('4', 'live'), ('older', 'live')]
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field, replace

from streamtrain.metrics.quality import QualitySeries
from streamtrain.quality.figures import RowScore, WindowFigures, summarise
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.prediction_record import ARMS, Arm

OLDER = "older"


@dataclass
class Tally:
    """One (version, arm): sums since start and the event-time window of labelled rows."""

    served: int = 0
    labelled: int = 0
    loss_sum: float = 0.0
    loss_squares: float = 0.0  # sum of squared per-row losses: the promotion test's variance
    correct: float = 0.0
    abs_error_sum: float = 0.0
    squared_error_sum: float = 0.0
    window: deque[tuple[float, RowScore]] = field(default_factory=deque)
    newest: float = float("-inf")

    def running_sums(self) -> tuple[int, int, float, float, float, float, float]:
        """The sums since start, in :class:`TallyReport`'s (and the checkpoint's) order."""
        return (
            self.served,
            self.labelled,
            self.loss_sum,
            self.loss_squares,
            self.correct,
            self.abs_error_sum,
            self.squared_error_sum,
        )

    def add(self, served_at: float, row: RowScore, window_s: float, max_rows: int) -> None:
        self.labelled += 1
        self.loss_sum += row.loss
        self.loss_squares += row.loss * row.loss
        if row.correct == row.correct:  # not NaN: classification
            self.correct += row.correct
        else:
            self.abs_error_sum += row.abs_error
            self.squared_error_sum += row.squared_error
        self.window.append((served_at, row))
        self.newest = max(self.newest, served_at)
        self._trim(window_s, max_rows)

    def merge(self, other: Tally, window_s: float, max_rows: int) -> None:
        self.served += other.served
        self.labelled += other.labelled
        self.loss_sum += other.loss_sum
        self.loss_squares += other.loss_squares
        self.correct += other.correct
        self.abs_error_sum += other.abs_error_sum
        self.squared_error_sum += other.squared_error_sum
        self.window = deque(sorted([*self.window, *other.window], key=lambda item: item[0]))
        self.newest = max(self.newest, other.newest)
        self._trim(window_s, max_rows)

    def copy(self) -> Tally:
        return replace(self, window=deque(self.window))

    def figures(self, spec: SampleSpec, window_s: float) -> WindowFigures:
        """The window's figures: rows served within ``window_s`` of the newest one."""
        start = self.newest - window_s
        return summarise(spec, [row for at, row in self.window if at >= start])

    def _trim(self, window_s: float, max_rows: int) -> None:
        # Labels arrive in label order, not served order: rows older than the window that
        # sit behind a newer one are skipped by figures(), and leave once they reach the front.
        start = self.newest - window_s
        while self.window and (len(self.window) > max_rows or self.window[0][0] < start):
            self.window.popleft()


@dataclass(frozen=True)
class TallyReport:
    """One tally's sums and window figures as they were when read."""

    version: str
    arm: Arm
    served: int
    labelled: int
    loss_sum: float
    loss_squares: float
    correct: float
    abs_error_sum: float
    squared_error_sum: float
    figures: WindowFigures


class VersionBooks:
    """The tallies of the ``keep`` newest versions and ``older``, for every arm; thread-safe
    (the join thread writes, the metrics scrape reads)."""

    def __init__(
        self, spec: SampleSpec, keep: int, window_s: float, max_window_rows: int = 100_000
    ) -> None:
        self.spec = spec
        self.keep = keep
        self.window_s = window_s
        self.max_window_rows = max_window_rows
        self._lock = threading.Lock()
        self._versions: dict[int, dict[Arm, Tally]] = {}
        self._older: dict[Arm, Tally] = {arm: Tally() for arm in ARMS}

    def served(self, version: int, arm: Arm) -> None:
        with self._lock:
            self._tally(version, arm).served += 1

    def labelled(self, version: int, arm: Arm, served_at: float, row: RowScore) -> None:
        with self._lock:
            self._tally(version, arm).add(served_at, row, self.window_s, self.max_window_rows)

    def report(self) -> list[TallyReport]:
        """Every tally's sums and window figures, ``older`` last (computed under the lock:
        a scrape holds the join back for one pass over the windows)."""
        with self._lock:
            entries = [
                (str(v), arm, t) for v, arms in self._versions.items() for arm, t in arms.items()
            ]
            entries += [(OLDER, arm, t) for arm, t in self._older.items()]
            return [
                TallyReport(version, arm, *t.running_sums(), t.figures(self.spec, self.window_s))
                for version, arm, t in entries
            ]

    def tallies(self) -> list[tuple[int | None, Arm, Tally]]:
        """Copies of every tally by (version, arm), version None for ``older``: what a
        checkpoint stores and :func:`merged` adds up."""
        with self._lock:
            out: list[tuple[int | None, Arm, Tally]] = [
                (v, arm, t.copy()) for v, arms in self._versions.items() for arm, t in arms.items()
            ]
            out += [(None, arm, t.copy()) for arm, t in self._older.items()]
        return out

    def restore(self, version: int | None, arm: Arm, tally: Tally) -> None:
        """Add ``tally`` into (version, arm), ``older`` for None, folding as a served row would."""
        with self._lock:
            target = self._older[arm] if version is None else self._tally(version, arm)
            target.merge(tally, self.window_s, self.max_window_rows)

    def _tally(self, version: int, arm: Arm) -> Tally:
        arms = self._versions.get(version)
        if arms is None:
            if (
                self._versions
                and len(self._versions) >= self.keep
                and version < min(self._versions)
            ):
                return self._older[arm]  # a version older than every kept one: folded at once
            arms = self._versions[version] = {a: Tally() for a in ARMS}
            while len(self._versions) > self.keep:
                self._fold(min(self._versions))
        return arms[arm]

    def _fold(self, version: int) -> None:
        for arm, tally in self._versions.pop(version).items():
            self._older[arm].merge(tally, self.window_s, self.max_window_rows)

    def series(self) -> list[QualitySeries]:
        """Every tally as the metrics export it (``streamtrain.metrics.quality``)."""
        # a regression row's loss is its squared error: only classification has a log loss
        log_loss = self.spec.is_classification
        return [
            QualitySeries(
                r.version,
                r.arm,
                {
                    "served_rows": float(r.served),
                    "labelled_rows": float(r.labelled),
                    "log_loss": r.loss_sum if log_loss else 0.0,
                    "correct_rows": r.correct,
                    "absolute_error": r.abs_error_sum,
                    "squared_error": r.squared_error_sum,
                    "label_coverage_ratio": r.labelled / r.served if r.served else math.nan,
                    "window_rows": float(r.figures.rows),
                    "window_log_loss": r.figures.log_loss,
                    "window_accuracy": r.figures.accuracy,
                    "window_auc": r.figures.auc,
                    "window_mae": r.figures.mae,
                    "window_rmse": r.figures.rmse,
                },
            )
            for r in self.report()
        ]


def merged(shape: VersionBooks, parts: list[VersionBooks]) -> VersionBooks:
    """A new :class:`VersionBooks` shaped as ``shape`` (spec, keep, window) adding up
    ``parts`` (the join's partitions): the ``keep`` newest versions over all of them, every
    other one folded into ``older``. The same sums as one book fed every row (a version
    folded in one part is older than ``keep`` versions there, so older than ``keep`` overall
    too), up to the order of the float additions."""
    out = VersionBooks(shape.spec, shape.keep, shape.window_s, shape.max_window_rows)
    for part in parts:
        for version, arm, tally in part.tallies():
            out.restore(version, arm, tally)
    return out
