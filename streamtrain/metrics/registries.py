"""The three registries (one per process kind) and the histogram buckets metrics share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

TRAINER_REGISTRY = CollectorRegistry(auto_describe=True)
SERVER_REGISTRY = CollectorRegistry(auto_describe=True)
JOIN_REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets from 100 µs to a minute: a small MLP steps in well under a millisecond, while a
# CNN or transformer step on a large CPU batch, or a large inference request, takes seconds; the
# top buckets keep those out of +Inf (docs/metrics.md has the measured figures).
_FAST = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_SLOW = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


def export_at_zero(metric: MetricWrapperBase, label_values: Iterable[Sequence[str]]) -> None:
    """Create every child of a labelled counter whose label values are known before its first
    event, so each is scraped at 0 from the start: ``increase()`` then sees the first event,
    and an alert on one label value has a series to watch before it happens."""
    for values in label_values:
        metric.labels(*values)


def export_on_first_value(registry: CollectorRegistry, *metrics: MetricWrapperBase) -> None:
    """Register metrics that were defined with no registry, once they have a value that means
    something (a gauge with no value yet is absent from a scrape, not a misleading 0)."""
    for metric in metrics:
        with contextlib.suppress(ValueError):  # registered already
            registry.register(metric)
