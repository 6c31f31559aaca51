"""Metrics of components a test runs in its own process, read as Prometheus reads them: over
HTTP from ``/metrics``, served by the exporter the trainer and join processes use
(:func:`streamtrain.metrics.serve_metrics`), parsed by the demo's scrape parser. Never from a
metric object's private value."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge

from streamtrain.demo.scrape import Scrape, scrape
from streamtrain.metrics import serve_metrics


class Exporter:
    """A registry on ``/metrics`` at a free local port; :meth:`scrape` reads it."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def scrape(self) -> Scrape:
        return scrape(self.url, timeout=10)

    def value(self, sample: str, **labels: str) -> float:
        """One sample's value now; 0 when it is not exported (yet)."""
        return self.scrape().value(sample, **labels) or 0.0


@contextmanager
def exported(registry: CollectorRegistry) -> Iterator[Exporter]:
    """``registry`` served on ``/metrics`` for the ``with`` block."""
    server = serve_metrics(registry, 0, host="127.0.0.1")
    try:
        yield Exporter(server.server_port)
    finally:
        server.shutdown()
        server.server_close()


def current(metric: Counter | Gauge, **labels: str) -> float:
    """The value of ``metric`` (the child with ``labels``) through its public ``collect()``,
    what an exporter reads: for unit tests, which start no exporter."""
    (family,) = metric.collect()
    found = [
        s.value
        for s in family.samples
        if s.labels == labels and not s.name.endswith(("_created", "_bucket"))
    ]
    if not found:
        return 0.0  # a labelled child not used yet
    (value,) = found
    return float(value)
