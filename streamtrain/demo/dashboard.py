"""What the demo shows while it runs: a rich live table on a terminal, plain lines elsewhere.

>>> stats = DemoStats(elapsed=3.0, samples_per_second=1980.0, accuracy=0.91, served_version=120)
>>> plain_line(stats)[:43]
't=   3s  samples/s 1980  loss -  acc 0.910 '
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from streamtrain.demo.scrape import Scrape

if TYPE_CHECKING:
    from streamtrain.demo.join_view import JoinStats


@dataclass(frozen=True)
class Prediction:
    """One answer of the live server to a real dataset sample."""

    predicted: int
    label: int
    model_version: str

    @property
    def correct(self) -> bool:
        return self.predicted == self.label

    @property
    def phrase(self) -> str:
        """What happened, in words a newcomer reads without a legend.

        >>> Prediction(predicted=1, label=1, model_version="70").phrase
        'predicted 1, true 1, right, version 70'
        """
        verdict = "right" if self.correct else "wrong"
        version = self.model_version
        return f"predicted {self.predicted}, true {self.label}, {verdict}, version {version}"


@dataclass(frozen=True)
class DemoStats:
    """Every number on the dashboard; None = not exported yet."""

    elapsed: float = 0.0
    samples_per_second: float | None = None
    loss: float | None = None
    accuracy: float | None = None
    served_version: int | None = None
    data_age_seconds: float | None = None
    rejected: float = 0.0
    snapshots: float = 0.0
    samples_trained: float = 0.0
    requests: float = 0.0
    swaps: float = 0.0
    prediction: Prediction | None = None
    predictions_correct: int = 0
    predictions_sent: int = 0
    join: JoinStats | None = None
    """With delayed labels: the join's numbers and the application's."""

    @classmethod
    def from_scrapes(
        cls,
        elapsed: float,
        trainer: Scrape | None,
        server: Scrape | None,
        prediction: Prediction | None = None,
        predictions_correct: int = 0,
        predictions_sent: int = 0,
    ) -> DemoStats:
        t = trainer or Scrape()
        s = server or Scrape()
        version = s.value("streamtrain_serve_model_version")
        return cls(
            elapsed=elapsed,
            # samples_per_second stays None here: the runner derives it from the trained
            # counter's deltas (demo.stall.RateMeter), which fall to 0 when nothing is learned,
            # where the trainer's gauge would keep its last value.
            loss=_finite(t.value("streamtrain_train_loss")),
            accuracy=_finite(t.value("streamtrain_train_prequential_accuracy_ratio")),
            # The gauge reads 0 before the first swap: show that as "none yet".
            served_version=int(version) if version else None,
            data_age_seconds=s.value("streamtrain_serve_data_age_seconds") if version else None,
            rejected=t.total("streamtrain_ingest_rejected_records_total"),
            snapshots=t.total("streamtrain_snapshot_published_total"),
            samples_trained=t.total("streamtrain_train_samples_total"),
            requests=s.total("streamtrain_serve_requests_total"),
            swaps=s.total("streamtrain_serve_swaps_total"),
            prediction=prediction,
            predictions_correct=predictions_correct,
            predictions_sent=predictions_sent,
        )


def _finite(value: float | None) -> float | None:
    """None for NaN/Inf: a gauge with nothing measured yet reads NaN."""
    return value if value is not None and math.isfinite(value) else None


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _prediction_text(stats: DemoStats) -> str:
    p = stats.prediction
    if p is None:
        return "waiting for the first snapshot"
    return f"{p.phrase} ({stats.predictions_correct}/{stats.predictions_sent} right so far)"


def plain_line(stats: DemoStats) -> str:
    """One log line per refresh, for CI logs and pipes."""
    p = stats.prediction
    pred = "no prediction yet" if p is None else p.phrase
    return (
        f"t={stats.elapsed:4.0f}s  samples/s {_num(stats.samples_per_second, '.0f')}  "
        f"loss {_num(stats.loss, '6.4f')}  acc {_num(stats.accuracy, '.3f')}  "
        f"served v{stats.served_version or '-'}  age {_num(stats.data_age_seconds, '.2f')}s  "
        f"trained {stats.samples_trained:.0f}  snapshots {stats.snapshots:.0f}  "
        f"rejected {stats.rejected:.0f}  requests {stats.requests:.0f}  "
        + (f"{stats.join.plain()}  " if stats.join is not None else "")
        + pred
    )


def render(stats: DemoStats, title: str) -> Panel:
    """The live table: training on the left, serving on the right, the last prediction below."""
    table = Table.grid(padding=(0, 3))
    for _ in range(4):
        table.add_column()
    rows = [
        (
            "samples/s",
            _num(stats.samples_per_second, ",.0f"),
            "served version",
            str(stats.served_version or "-"),
        ),
        (
            "rolling loss",
            _num(stats.loss, ".4f"),
            "data age",
            f"{_num(stats.data_age_seconds, '.2f')} s",
        ),
        ("prequential accuracy", _num(stats.accuracy, ".3f"), "swaps", f"{stats.swaps:.0f}"),
        (
            "samples trained",
            f"{stats.samples_trained:,.0f}",
            "requests served",
            f"{stats.requests:.0f}",
        ),
        (
            "snapshots published",
            f"{stats.snapshots:.0f}",
            "rejected records",
            f"{stats.rejected:.0f}",
        ),
    ]
    if stats.join is not None:
        rows += stats.join.rows()
    for left, lval, right, rval in rows:
        table.add_row(
            Text(left, style="dim"),
            Text(lval, style="bold"),
            Text(right, style="dim"),
            Text(rval, style="bold"),
        )
    footer = Text(f"last prediction: {_prediction_text(stats)}", style="cyan")
    return Panel(
        Group(table, Text(""), footer),
        title=f"{title}  ({stats.elapsed:.0f} s)  Ctrl-C stops",
        expand=False,
    )


class Dashboard(Protocol):
    """Where the demo sends each refresh."""

    def update(self, stats: DemoStats) -> None: ...

    def __enter__(self) -> Dashboard: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class LiveDashboard:
    """A rich ``Live`` panel redrawn in place (terminal only)."""

    def __init__(self, console: Console, title: str, refreshes_per_second: float = 2.0) -> None:
        self._title = title
        self._live = Live(
            render(DemoStats(), title),
            console=console,
            refresh_per_second=refreshes_per_second,
            transient=False,
        )

    def update(self, stats: DemoStats) -> None:
        self._live.update(render(stats, self._title))

    def __enter__(self) -> LiveDashboard:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)


class PlainDashboard:
    """A plain line every ``every_seconds`` (when stdout is not a terminal)."""

    def __init__(self, console: Console, every_seconds: float = 2.0) -> None:
        self._console = console
        self._every = every_seconds
        self._last = float("-inf")

    def update(self, stats: DemoStats) -> None:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._console.print(plain_line(stats), highlight=False, soft_wrap=True)

    def __enter__(self) -> PlainDashboard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def make_dashboard(console: Console, title: str) -> LiveDashboard | PlainDashboard:
    return LiveDashboard(console, title) if console.is_terminal else PlainDashboard(console)
