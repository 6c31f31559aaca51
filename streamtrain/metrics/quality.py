"""Served quality per model version and arm (``JOIN_REGISTRY``), read from the join's
:class:`~streamtrain.quality.books.VersionBooks` at scrape time.

Labels ``version`` (the ``join.quality_versions`` newest versions, older ones as ``older``)
and ``arm`` (``live``, ``candidate``, ``shadow``): at most (K + 1) x 3 series per metric.
Counters are sums since the join started, so any range is ``rate(sum) / rate(rows)`` and
several join replicas add up; the ``window_*`` gauges are the event-time window of
``join.quality_window_s`` (NaN while it holds no labelled row, or for AUC without both
classes). Before the first record every counter is exported at 0 under ``older``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamtrain.metrics.registries import JOIN_REGISTRY
from streamtrain.quality.books import OLDER, TallyReport, VersionBooks
from streamtrain.quality.figures import WindowFigures
from streamtrain.wire.prediction_record import ARMS

_LABELS = ["version", "arm"]
_EMPTY = WindowFigures(0, math.nan, math.nan, math.nan, math.nan, math.nan)


class ServedQualityCollector(Collector):
    """Exports the attached books (none yet: zeros under ``older``)."""

    def __init__(self) -> None:
        self._books: VersionBooks | None = None

    def attach(self, books: VersionBooks | None) -> None:
        self._books = books

    def collect(self) -> Iterator[Metric]:
        books = self._books
        reports = (
            books.report()
            if books is not None
            else [TallyReport(OLDER, arm, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, _EMPTY) for arm in ARMS]
        )
        # a regression row's loss is its squared error: only classification has a log loss
        log_loss = books is None or books.spec.is_classification
        for name, doc, attr in _COUNTERS:
            family = CounterMetricFamily(f"streamtrain_quality_{name}", doc, labels=_LABELS)
            for r in reports:
                value = getattr(r, attr) if attr != "loss_sum" or log_loss else 0.0
                family.add_metric([r.version, r.arm], float(value))
            yield family
        coverage = GaugeMetricFamily(
            "streamtrain_quality_label_coverage_ratio",
            "Labelled served rows / served rows, since the join started (NaN before a row).",
            labels=_LABELS,
        )
        for r in reports:
            coverage.add_metric([r.version, r.arm], r.labelled / r.served if r.served else math.nan)
        yield coverage
        for name, doc in _WINDOW:
            gauge = GaugeMetricFamily(f"streamtrain_quality_window_{name}", doc, labels=_LABELS)
            for r in reports:
                gauge.add_metric([r.version, r.arm], float(getattr(r.figures, name)))
            yield gauge


# Every family whatever the task, so a dashboard's queries always find their series: the
# other task's counters stay 0 and its window figures NaN (as AUC for a multiclass model).
_COUNTERS = (
    ("served_rows", "Served rows the join saw, by model version and arm.", "served"),
    ("labelled_rows", "Served rows whose label arrived, by version and arm.", "labelled"),
    ("log_loss", "Classification: summed log loss of labelled served rows.", "loss_sum"),
    ("correct_rows", "Classification: labelled rows whose predicted class was right.", "correct"),
    ("absolute_error", "Regression: summed absolute error of labelled rows.", "abs_error_sum"),
    ("squared_error", "Regression: summed squared error of labelled rows.", "squared_error_sum"),
)
_WINDOW = (
    ("rows", "Labelled rows in the event-time window."),
    ("log_loss", "Classification: mean log loss of the window's labelled served rows."),
    ("accuracy", "Classification: accuracy of the window's labelled served rows."),
    ("auc", "Binary models: ROC AUC of the window's labelled served rows."),
    ("mae", "Regression: mean absolute error of the window's labelled served rows."),
    ("rmse", "Regression: root mean squared error of the window's labelled served rows."),
)


SERVED_QUALITY = ServedQualityCollector()
JOIN_REGISTRY.register(SERVED_QUALITY)
