"""What the delayed-labels demo shows on top of training and serving: the join's own numbers,
scraped from its ``/metrics``, and what the application saw (its status file).

>>> from streamtrain.demo.scrape import parse_metrics
>>> join = parse_metrics('''
... # TYPE streamtrain_join_emitted_samples_total counter
... streamtrain_join_emitted_samples_total{outcome="joined"} 120.0
... # TYPE streamtrain_join_label_delay_seconds histogram
... streamtrain_join_label_delay_seconds_bucket{le="1.0"} 40.0
... streamtrain_join_label_delay_seconds_bucket{le="2.5"} 100.0
... streamtrain_join_label_delay_seconds_bucket{le="+Inf"} 120.0
... streamtrain_join_label_delay_seconds_count 120.0
... streamtrain_join_label_delay_seconds_sum 200.0
... ''')
>>> stats = JoinStats.from_sources(join, None, None)
>>> stats.joined, round(stats.delay_p50 or 0, 2)
(120.0, 1.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from streamtrain.demo.app_status import ACCURACY_WINDOW, AppStatus
from streamtrain.demo.delayed import LABEL_DELAY_MAX_SECONDS, LABEL_DELAY_MIN_SECONDS
from streamtrain.demo.scrape import Scrape

# The join's and the prediction log's metrics, as exported (docs/metrics.md).
EMITTED = "streamtrain_join_emitted_samples_total"
LABEL_DELAY = "streamtrain_join_label_delay_seconds"
EXPIRED = "streamtrain_join_expired_predictions_total"
DEAD_LETTERED = "streamtrain_join_dead_lettered_records_total"
PENDING = "streamtrain_join_pending_predictions_records"
LOG_DROPPED = "streamtrain_serve_prediction_log_dropped_records_total"
LOGGED = "streamtrain_serve_prediction_log_records_total"


def histogram_quantile(scrape: Scrape, name: str, q: float) -> float | None:
    """Prometheus' ``histogram_quantile`` over one scrape's cumulative buckets (linear within
    a bucket); None before anything was observed."""
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for labels, count in scrape.samples.get(f"{name}_bucket", {}).items()
    )
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True)
class JoinStats:
    """The delayed-labels numbers of one refresh; None = not exported yet."""

    joined: float = 0.0
    default_labelled: float = 0.0
    delay_p50: float | None = None
    delay_p99: float | None = None
    expired: float = 0.0
    dead_lettered: dict[str, float] | None = None
    pending: float | None = None
    logged: float = 0.0
    log_dropped: float = 0.0
    app: AppStatus | None = None

    @classmethod
    def from_sources(
        cls, join: Scrape | None, server: Scrape | None, app: AppStatus | None
    ) -> JoinStats:
        j = join or Scrape()
        s = server or Scrape()
        dlq: dict[str, float] = {}
        for labels, value in j.samples.get(DEAD_LETTERED, {}).items():
            reason = dict(labels).get("reason", "?")
            dlq[reason] = dlq.get(reason, 0.0) + value
        return cls(
            joined=j.value(EMITTED, outcome="joined") or 0.0,
            default_labelled=j.value(EMITTED, outcome="default_label") or 0.0,
            delay_p50=histogram_quantile(j, LABEL_DELAY, 0.5),
            delay_p99=histogram_quantile(j, LABEL_DELAY, 0.99),
            expired=j.total(EXPIRED),
            dead_lettered=dlq,
            pending=j.value(PENDING),
            logged=s.total(LOGGED),
            log_dropped=s.total(LOG_DROPPED),
            app=app,
        )

    @property
    def dead_lettered_total(self) -> float:
        return sum((self.dead_lettered or {}).values())

    def delay_text(self) -> str:
        if self.delay_p50 is None or self.delay_p99 is None:
            return "-"
        return f"p50 {self.delay_p50:.2f} s, p99 {self.delay_p99:.2f} s"

    def dlq_text(self) -> str:
        reasons = ", ".join(f"{k} {v:.0f}" for k, v in sorted((self.dead_lettered or {}).items()))
        return f"{self.dead_lettered_total:.0f}" + (f" ({reasons})" if reasons else "")

    def plain(self) -> str:
        """The delayed-labels part of a plain refresh line."""
        served = self.app.served_accuracy if self.app else None
        return (
            f"joined {self.joined:.0f}  pending {_num(self.pending, '.0f')}  "
            f"expired {self.expired:.0f}  dlq {self.dead_lettered_total:.0f}  "
            f"served-acc {_num(served, '.3f')}"
        )

    def rows(self) -> list[tuple[str, str, str, str]]:
        """Two more rows for the live table."""
        served = self.app.served_accuracy if self.app else None
        return [
            ("joined samples", f"{self.joined:,.0f}", "label delay", self.delay_text()),
            (
                "pending predictions",
                _num(self.pending, ",.0f"),
                "expired / dead-lettered",
                f"{self.expired:.0f} / {self.dead_lettered_total:.0f}",
            ),
            ("predictions logged", f"{self.logged:,.0f}", "served accuracy", _num(served, ".3f")),
        ]


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


class DelayedLabelsWatch:
    """Follows one delayed-labels run: the first and last served accuracy, the last numbers."""

    def __init__(self, status_path: Path) -> None:
        self.status_path = status_path
        self.last = JoinStats()
        self.first_served_accuracy: float | None = None
        self.best_served_accuracy: float | None = None

    def intro(self) -> str:
        low, high = LABEL_DELAY_MIN_SECONDS, LABEL_DELAY_MAX_SECONDS
        return (
            "delayed labels: the producer asks the server over HTTP, the server logs each served "
            f"row, and {low:g}-{high:g} s later the producer sends the row's label "
            "keyed by the request id; the join pairs them and the trainer learns from the "
            "features exactly as served"
        )

    def observe(self, join: Scrape | None, server: Scrape | None) -> JoinStats:
        stats = JoinStats.from_sources(join, server, AppStatus.read(self.status_path))
        # The first accuracy worth quoting is over a full window, not over the first labels.
        app = stats.app
        if app and app.labels_sent >= ACCURACY_WINDOW and app.served_accuracy is not None:
            if self.first_served_accuracy is None:
                self.first_served_accuracy = app.served_accuracy
            self.best_served_accuracy = max(self.best_served_accuracy or 0.0, app.served_accuracy)
        self.last = stats
        return stats

    def lines(self) -> list[str]:
        s = self.last
        # The application writes its status a last time on its way out: read that one.
        app = AppStatus.read(self.status_path) or s.app or AppStatus()
        first, last = self.first_served_accuracy, app.served_accuracy
        if first is not None and last is not None:
            served = (
                f"served accuracy, judged as labels arrived (last {ACCURACY_WINDOW:,} labelled "
                f"rows): {first:.3f} at the first full window, {self.best_served_accuracy:.3f} "
                f"at best, {last:.3f} at the end"
            )
        elif last is not None:
            served = f"served accuracy over the {app.labels_sent:,} labelled rows: {last:.3f}"
        else:
            served = "served accuracy: not measured (no label arrived)"
        return [
            f"requests: {app.requests:,} ({app.requests_failed} failed); rows served: "
            f"{app.rows_served:,}; labels sent: {app.labels_sent:,} (pending "
            f"{app.labels_pending:,} at stop); bootstrap samples before the first snapshot: "
            f"{app.bootstrap_samples:,}",
            f"predictions logged: {s.logged:,.0f} (dropped {s.log_dropped:.0f}); joined "
            f"samples: {s.joined:,.0f}; label delay {s.delay_text()} (interpolated in the "
            "join's histogram buckets)",
            f"expired predictions: {s.expired:,.0f} (the live view's own probes never get a "
            f"label; emitted with a default label: {s.default_labelled:,.0f}); dead-lettered "
            f"records: {s.dlq_text()}",
            served,
        ]
