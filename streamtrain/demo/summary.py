"""What a demo run proved, remembered from the live numbers and told at the end.

>>> from streamtrain.demo.dashboard import DemoStats
>>> tracker = SummaryTracker()
>>> tracker.observe(DemoStats(accuracy=0.55, samples_trained=300, served_version=None))
>>> tracker.observe(DemoStats(accuracy=0.93, samples_trained=9000, served_version=41))
>>> tracker.observe(DemoStats(accuracy=0.94, samples_trained=20000, served_version=96))
>>> print(tracker.lines()[0])
prequential accuracy: 0.550 at start -> 0.940 at end (rising)
>>> print(tracker.lines()[1])
served version: 41 first -> 96 last (advancing)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamtrain.demo.dashboard import DemoStats


@dataclass
class SummaryTracker:
    """First and last of the numbers that show learning and serving progress."""

    first_accuracy: float | None = None
    last_accuracy: float | None = None
    first_version: int | None = None
    last_version: int | None = None
    last: DemoStats = field(default_factory=DemoStats)

    def observe(self, stats: DemoStats) -> None:
        # Accuracy means something only once the trainer has learned from a sample.
        if stats.accuracy is not None and stats.samples_trained > 0:
            if self.first_accuracy is None:
                self.first_accuracy = stats.accuracy
            self.last_accuracy = stats.accuracy
        if stats.served_version is not None:
            if self.first_version is None:
                self.first_version = stats.served_version
            self.last_version = stats.served_version
        self.last = stats

    @property
    def accuracy_rising(self) -> bool:
        return (
            self.first_accuracy is not None
            and self.last_accuracy is not None
            and self.last_accuracy > self.first_accuracy
        )

    @property
    def versions_advancing(self) -> bool:
        return (
            self.first_version is not None
            and self.last_version is not None
            and self.last_version > self.first_version
        )

    def lines(self) -> list[str]:
        s = self.last
        if self.first_accuracy is None or self.last_accuracy is None:
            accuracy = "prequential accuracy: not measured (no sample trained)"
        else:
            trend = "rising" if self.accuracy_rising else "not rising"
            accuracy = (
                f"prequential accuracy: {self.first_accuracy:.3f} at start -> "
                f"{self.last_accuracy:.3f} at end ({trend})"
            )
        if self.first_version is None or self.last_version is None:
            versions = "served version: none (no snapshot went live)"
        else:
            trend = "advancing" if self.versions_advancing else "not advancing"
            versions = (
                f"served version: {self.first_version} first -> {self.last_version} last ({trend})"
            )
        probes = (
            f"{s.predictions_correct}/{s.predictions_sent} demo predictions right"
            if s.predictions_sent
            else "no demo predictions"
        )
        return [
            accuracy,
            versions,
            f"samples trained: {s.samples_trained:,.0f}; snapshots published: "
            f"{s.snapshots:.0f}; swaps: {s.swaps:.0f}",
            f"rejected records: {s.rejected:.0f}; requests served: {s.requests:.0f} ({probes})",
        ]
