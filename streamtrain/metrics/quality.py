"""Served quality per model version and arm (``JOIN_REGISTRY``), read at scrape time from
the series the join's :mod:`streamtrain.quality` attaches (``SERVED_QUALITY.attach``).

Labels ``version`` (the ``join.quality_versions`` newest versions, older ones as ``older``)
and ``arm`` (``live``, ``candidate``, ``shadow``): at most (K + 1) x 3 series per family.
Counters are sums over the partitions the join holds (kept across restarts in its
checkpoints), so any range is ``rate(sum) / rate(rows)`` and several join replicas add up;
the ``window_*`` gauges are the event-time window of ``join.quality_window_s`` (NaN while it
holds no labelled row, or for AUC without both classes). Every family is exported whatever
the model's task: the other task's counters stay 0 and its window figures NaN, so a
dashboard's queries always find their series. Nothing is exported before a join attaches
its series; it attaches them at 0 as it starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamtrain.metrics.registries import JOIN_REGISTRY

# (name after streamtrain_quality_, help) of each family, counters then gauges.
QUALITY_COUNTERS = (
    ("served_rows", "Served rows the join saw, by model version and arm."),
    ("labelled_rows", "Served rows whose label arrived, by version and arm."),
    ("log_loss", "Classification: summed log loss of labelled served rows."),
    ("correct_rows", "Classification: labelled rows whose predicted class was right."),
    ("absolute_error", "Regression: summed absolute error of labelled rows."),
    ("squared_error", "Regression: summed squared error of labelled rows."),
)
QUALITY_GAUGES = (
    ("label_coverage_ratio", "Labelled / served rows of the partitions held (NaN before one)."),
    ("window_rows", "Labelled rows in the event-time window."),
    ("window_log_loss", "Classification: mean log loss of the window's labelled served rows."),
    ("window_accuracy", "Classification: accuracy of the window's labelled served rows."),
    ("window_auc", "Binary models: ROC AUC of the window's labelled served rows."),
    ("window_mae", "Regression: mean absolute error of the window's labelled served rows."),
    ("window_rmse", "Regression: root mean squared error of the window's labelled served rows."),
)


@dataclass(frozen=True)
class QualitySeries:
    """One (version, arm): a value for every family name of the two tables above."""

    version: str
    arm: str
    values: Mapping[str, float]


class ServedQualityCollector(Collector):
    """Exports the attached series; nothing while none are attached."""

    label_names = ("version", "arm")

    def __init__(self) -> None:
        self._source: Callable[[], Sequence[QualitySeries]] | None = None

    def attach(self, source: Callable[[], Sequence[QualitySeries]] | None) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        series = [] if self._source is None else self._source()
        labels = list(self.label_names)
        for name, doc in QUALITY_COUNTERS:
            counter = CounterMetricFamily(f"streamtrain_quality_{name}", doc, labels=labels)
            for s in series:
                counter.add_metric([s.version, s.arm], s.values[name])
            yield counter
        for name, doc in QUALITY_GAUGES:
            gauge = GaugeMetricFamily(f"streamtrain_quality_{name}", doc, labels=labels)
            for s in series:
                gauge.add_metric([s.version, s.arm], s.values[name])
            yield gauge


SERVED_QUALITY = ServedQualityCollector()
JOIN_REGISTRY.register(SERVED_QUALITY)
