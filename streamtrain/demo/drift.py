"""The demo's recurring concept drift: when it happens in the stream, and saying so when the
trainer reaches it.

The hyperplane stream switches between two concepts every ``period`` samples, sized so that a
drift comes about every ``DRIFT_EVERY_SECONDS`` of stream at the producer's rate: a viewer sees
the accuracy fall and recover several times a minute, each announced as it happens.

>>> watch = DriftWatch(period=drift_period(rate=2000))
>>> watch.period
40000
>>> watch.crossed(39_999.0), watch.crossed(40_512.0), watch.crossed(41_000.0)
(None, 40000, None)
>>> watch.crossed(125_000.0)  # two drifts between refreshes: the newest is announced
120000
"""

from __future__ import annotations

from dataclasses import dataclass

from streamtrain.datasets import DatasetInfo, get_dataset, hyperplane

DRIFT_EVERY_SECONDS = 20.0
# The probe's sample pool holds two periods; this bounds its memory at high rates.
MAX_PERIOD = 100_000
MIN_PERIOD = 1_000


def drift_period(rate: float) -> int:
    """Samples between drifts: about DRIFT_EVERY_SECONDS of stream at ``rate``."""
    return int(min(MAX_PERIOD, max(MIN_PERIOD, rate * DRIFT_EVERY_SECONDS)))


def demo_dataset(name: str, rate: float) -> tuple[DatasetInfo, int | None]:
    """The stream the demo produces and probes, and its drift period (None: no drift)."""
    info = get_dataset(name)
    if not name.startswith("hyperplane"):
        return info, None
    period = drift_period(rate)
    classes = info.spec.num_classes
    return hyperplane(num_classes=classes, drift_at=None, drift_every=period), period


@dataclass
class DriftWatch:
    """Tells when the trainer's position in the stream passes the next drift."""

    period: int
    last_announced: int = 0

    def crossed(self, samples_trained: float) -> int | None:
        """The stream index of a drift the trainer passed since the last call, if any."""
        newest = int(samples_trained) // self.period * self.period
        if newest <= self.last_announced:
            return None
        self.last_announced = newest
        return newest

    def intro(self, rate: float) -> str:
        seconds = self.period / rate
        return (
            f"the stream drifts every {self.period:,} samples (about {seconds:.0f} s): the two "
            "hyperplane concepts take turns, so watch the accuracy drop and recover"
        )

    def announcement(self, at: int) -> str:
        concept = "B" if (at // self.period) % 2 else "A"
        return (
            f"drift at sample {at:,}: the hyperplane switched to concept {concept}; accuracy "
            "drops, then recovers as the model re-learns"
        )
