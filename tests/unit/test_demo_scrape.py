"""Parsing real Prometheus exposition text from the metrics catalogue."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streamtrain.demo.scrape import ScrapeError, parse_metrics, scrape


def _registry_text() -> str:
    registry = CollectorRegistry()
    steps = Counter("streamtrain_train_steps", "steps", registry=registry)
    rejected = Counter("streamtrain_ingest_rejected_records", "r", ["reason"], registry=registry)
    loss = Gauge("streamtrain_train_loss", "loss", registry=registry)
    hist = Histogram("streamtrain_train_step_seconds", "s", buckets=(0.1, 1.0), registry=registry)
    steps.inc(7)
    rejected.labels("bad_shape").inc(2)
    rejected.labels("non_finite").inc()
    loss.set(0.25)
    hist.observe(0.5)
    return generate_latest(registry).decode()


def test_parses_counters_gauges_labels_and_histograms() -> None:
    result = parse_metrics(_registry_text())
    assert result.families["streamtrain_train_steps"] == "counter"
    assert result.families["streamtrain_train_loss"] == "gauge"
    assert result.families["streamtrain_train_step_seconds"] == "histogram"
    assert result.value("streamtrain_train_steps_total") == 7.0
    assert result.value("streamtrain_train_loss") == 0.25
    assert result.value("streamtrain_ingest_rejected_records_total", reason="bad_shape") == 2.0
    assert result.total("streamtrain_ingest_rejected_records_total") == 3.0
    assert result.value("streamtrain_train_step_seconds_count") == 1.0
    assert result.value("streamtrain_train_step_seconds_bucket", le="1.0") == 1.0


def test_absent_samples_read_as_none_or_zero() -> None:
    result = parse_metrics(_registry_text())
    assert result.value("streamtrain_serve_model_version") is None
    assert result.value("streamtrain_ingest_rejected_records_total", reason="oversized") is None
    assert result.total("streamtrain_serve_requests_total") == 0.0


def test_garbage_is_a_scrape_error() -> None:
    with pytest.raises(ScrapeError, match="not Prometheus text format"):
        parse_metrics("streamtrain_x{unclosed 1\n")


def test_unreachable_endpoint_is_a_scrape_error() -> None:
    from streamtrain.broker import free_port

    with pytest.raises(ScrapeError, match="cannot scrape"):
        scrape(f"http://127.0.0.1:{free_port()}/metrics", timeout=1.0)
