"""Read a live Prometheus ``/metrics`` endpoint into plain numbers.

The demo shows only what the real endpoints export: nothing is read from inside the trainer or
the server. Parsing uses ``prometheus_client``'s own text parser.

>>> scrape = parse_metrics('''
... # HELP streamtrain_train_optimizer_updates_total Optimizer updates applied.
... # TYPE streamtrain_train_optimizer_updates_total counter
... streamtrain_train_optimizer_updates_total 42.0
... # TYPE streamtrain_ingest_rejected_records_total counter
... streamtrain_ingest_rejected_records_total{reason="bad_shape"} 2.0
... streamtrain_ingest_rejected_records_total{reason="non_finite"} 1.0
... ''')
>>> scrape.value("streamtrain_train_optimizer_updates_total")
42.0
>>> scrape.total("streamtrain_ingest_rejected_records_total")
3.0
>>> scrape.value("streamtrain_ingest_rejected_records_total", reason="bad_shape")
2.0
>>> sorted(scrape.families)
['streamtrain_ingest_rejected_records', 'streamtrain_train_optimizer_updates']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


class ScrapeError(RuntimeError):
    """A /metrics endpoint that could not be reached or parsed."""


@dataclass(frozen=True)
class Scrape:
    """One scrape: family name -> type, and every sample's value by name and labels."""

    families: dict[str, str] = field(default_factory=dict)
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)
    sample_counts: dict[str, int] = field(default_factory=dict)
    """Samples per family: 0 for a labelled family no label set of which was used yet."""

    def value(self, sample: str, **labels: str) -> float | None:
        """The value of the sample with exactly these labels, or None if absent."""
        return self.samples.get(sample, {}).get(frozenset(labels.items()))

    def total(self, sample: str) -> float:
        """The sum over every label set of ``sample`` (0 when absent)."""
        return sum(self.samples.get(sample, {}).values())


def parse_metrics(text: str) -> Scrape:
    """Parse Prometheus text exposition format.

    Raises:
        ScrapeError: the text is not valid exposition format.
    """
    families: dict[str, str] = {}
    samples: dict[str, dict[Labels, float]] = {}
    counts: dict[str, int] = {}
    try:
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            counts[family.name] = counts.get(family.name, 0) + len(family.samples)
            for sample in family.samples:
                samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = float(
                    sample.value
                )
    except ValueError as exc:
        raise ScrapeError(f"not Prometheus text format: {exc}") from exc
    return Scrape(families, samples, counts)


def scrape(url: str, timeout: float = 2.0, client: httpx.Client | None = None) -> Scrape:
    """GET and parse ``url`` (a ``/metrics`` endpoint).

    Raises:
        ScrapeError: the endpoint did not answer 200 with valid exposition text.
    """
    # Redirects are followed as Prometheus does: an ASGI mount answers /metrics with a 307.
    try:
        if client is not None:
            response = client.get(url, timeout=timeout, follow_redirects=True)
        else:
            response = httpx.get(url, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise ScrapeError(f"cannot scrape {url}: {exc}") from exc
    if response.status_code != 200:
        raise ScrapeError(f"cannot scrape {url}: HTTP {response.status_code}")
    return parse_metrics(response.text)
