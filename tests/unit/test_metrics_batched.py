"""The batched request metrics (streamtrain.metrics.batched) expose exactly what
prometheus_client's own Counter and Histogram would for the same events, at every scrape of the
real /metrics endpoint, with events from several threads between scrapes."""

from __future__ import annotations

import random
import threading
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from streamtrain.metrics import serve_metrics
from streamtrain.metrics.batched import BatchedCounter, BatchedHistogram
from streamtrain.metrics.registries import _FAST

_OUTCOMES = ("ok", "bad_request", "error")


class _Scraper:
    """The real /metrics endpoint of ``registry``, served for the test's duration."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._server = serve_metrics(registry, 0, host="127.0.0.1")
        self._url = f"http://127.0.0.1:{self._server.server_port}/metrics"

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample but the ``_created`` timestamps."""
        with urllib.request.urlopen(self._url, timeout=30) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pair() -> tuple[CollectorRegistry, CollectorRegistry, tuple[object, ...], tuple[object, ...]]:
    plain, batched = CollectorRegistry(), CollectorRegistry()
    plain_metrics = (
        Counter("req", "Requests.", ["outcome"], registry=plain),
        Histogram("req_seconds", "Latency.", buckets=_FAST, registry=plain),
    )
    batched_metrics = (
        BatchedCounter("req", "Requests.", ["outcome"], registry=batched),
        BatchedHistogram("req_seconds", "Latency.", buckets=_FAST, registry=batched),
    )
    return plain, batched, plain_metrics, batched_metrics


def test_every_scrape_matches_the_plain_metrics() -> None:
    plain, batched, (p_count, p_hist), (b_count, b_hist) = _pair()
    plain_scraper, batched_scraper = _Scraper(plain), _Scraper(batched)
    rng = random.Random(7)
    # Values on and between bucket bounds (``le`` is inclusive), beyond the last, and zero.
    values = [0.0, 0.0001, 0.00025, 0.00013, 60.0, 61.0, *(rng.uniform(0, 2) for _ in range(500))]
    for start in range(0, len(values), 100):
        for value in values[start : start + 100]:
            outcome = _OUTCOMES[int(value * 1000) % 3]
            for counter, histogram in ((p_count, p_hist), (b_count, b_hist)):
                counter.labels(outcome).inc()  # type: ignore[attr-defined]
                histogram.observe(value)  # type: ignore[attr-defined]
        scraped = batched_scraper.samples()
        assert scraped == plain_scraper.samples()
        assert scraped[("req_seconds_count", ())] == min(start + 100, len(values))
    plain_scraper.close()
    batched_scraper.close()


def test_events_from_threads_are_all_scraped() -> None:
    registry = CollectorRegistry()
    counter = BatchedCounter("req", "Requests.", ["outcome"], registry=registry)
    histogram = BatchedHistogram("rows", "Rows.", buckets=(1, 2, 4), registry=registry)
    per_thread, threads = 2000, 4
    scrapes: list[float] = []
    scraper = _Scraper(registry)

    def work() -> None:
        child = counter.labels("ok")
        for i in range(per_thread):
            child.inc()
            histogram.observe(1 + i % 4)  # 1, 2, 3, 4: buckets 1, 2, 4, 4

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    while any(w.is_alive() for w in workers):  # scrapes while events arrive
        scrapes.append(scraper.samples().get(("req_total", (("outcome", "ok"),)), 0.0))
    for worker in workers:
        worker.join()
    final = scraper.samples()
    scraper.close()
    total = per_thread * threads
    assert scrapes == sorted(scrapes)  # a counter never goes back between scrapes
    assert final[("req_total", (("outcome", "ok"),))] == total
    assert final[("rows_count", ())] == total
    assert final[("rows_bucket", (("le", "1.0"),))] == total / 4
    assert final[("rows_bucket", (("le", "4.0"),))] == total
    assert final[("rows_sum", ())] == total / 4 * (1 + 2 + 3 + 4)


def test_unsupported_uses_are_refused() -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="no labels"):
        BatchedHistogram("h", "H.", ["a"], registry=registry)
    histogram = BatchedHistogram("h2", "H.", registry=registry)
    with pytest.raises(ValueError, match="exemplars"):
        histogram.observe(1.0, {"trace_id": "x"})
    counter = BatchedCounter("c", "C.", ["outcome"], registry=registry)
    with pytest.raises(ValueError):  # a labelled parent counts nothing itself, as upstream
        counter.inc()
    with pytest.raises(ValueError):  # negative amounts, as upstream
        counter.labels("ok").inc(-1)
