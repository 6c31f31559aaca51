"""The Grafana dashboard queries only series the code exports, and queries them correctly.

The exported names come from a real scrape: both registries are served with
``streamtrain.metrics.serve_metrics`` on free ports and fetched over HTTP. A labelled metric
shows no series until it has a child, so the test creates one child per labelled metric (value
0, removed afterwards) before scraping.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

import streamtrain.metrics as metrics
from streamtrain.metrics import JOIN_REGISTRY, SERVER_REGISTRY, TRAINER_REGISTRY, serve_metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamtrain.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
_NAME = re.compile(r"streamtrain_[a-z0-9_]+")
_PROBE = "deploy_test_probe"


def _labelled() -> list[tuple[MetricWrapperBase, tuple[str, ...]]]:
    found = []
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            names: tuple[str, ...] = getattr(obj, "_labelnames", ())
            if names:
                found.append((obj, tuple(_PROBE for _ in names)))
    return found


def _registered(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def _scrape(registry: CollectorRegistry) -> set[str]:
    server = serve_metrics(registry, 0, host="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    return {
        m.group(0)
        for line in text.splitlines()
        if not line.startswith("#") and (m := _NAME.match(line))
    }


@pytest.fixture(scope="module")
def exported() -> Iterator[dict[str, set[str]]]:
    """Sample names in a scrape of each registry, every family present."""
    probes = _labelled()
    for metric, values in probes:
        metric.labels(*values)
    metrics.export_cuda_metrics()  # as a trainer on CUDA does; the dashboard charts them
    present = _registered(TRAINER_REGISTRY)
    late = [m for m in metrics.ON_FIRST_VALUE if m.collect()[0].name not in present]
    metrics.export_on_first_value(TRAINER_REGISTRY, *late)  # as a running trainer does
    families = (*metrics.QUALITY_COUNTERS, *metrics.QUALITY_GAUGES)
    zero = metrics.QualitySeries("older", "live", {name: 0.0 for name, _ in families})
    metrics.SERVED_QUALITY.attach(lambda: [zero])  # as a running join does
    try:
        yield {
            "trainer": _scrape(TRAINER_REGISTRY),
            "server": _scrape(SERVER_REGISTRY),
            "join": _scrape(JOIN_REGISTRY),
        }
    finally:
        for metric in (*metrics.CUDA_ONLY, *late):
            TRAINER_REGISTRY.unregister(metric)
        for metric, values in probes:
            metric.remove(*values)
        metrics.SERVED_QUALITY.attach(None)


def _targets(panel: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = panel.get("targets", [])
    return targets


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _expressions() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in _targets(p)]


def test_scrape_holds_every_family_of_both_registries(exported: dict[str, set[str]]) -> None:
    registries = (("trainer", TRAINER_REGISTRY), ("server", SERVER_REGISTRY))
    for process, registry in (*registries, ("join", JOIN_REGISTRY)):
        for family in registry.collect():
            if not family.name.startswith("streamtrain_"):
                continue  # process_* and python_*: prometheus_client's standard collectors
            suffix = {"counter": "_total", "histogram": "_bucket", "info": "_info"}.get(
                family.type, ""
            )
            assert family.name + suffix in exported[process], f"{family.name} not scraped"


def test_dashboard_queries_only_exported_series(exported: dict[str, set[str]]) -> None:
    names = {n for expr in _expressions() for n in _NAME.findall(expr)}
    unknown = names - exported["trainer"] - exported["server"] - exported["join"]
    assert not unknown, f"dashboard queries series no process exports: {sorted(unknown)}"


def test_dashboard_covers_the_pipeline() -> None:
    queried = " ".join(_expressions())
    for name in (
        "streamtrain_ingest_records_total",
        "streamtrain_ingest_consumer_lag_records",
        "streamtrain_ingest_rejected_records_total",
        "streamtrain_train_loss",
        "streamtrain_train_prequential_accuracy_ratio",
        "streamtrain_train_step_seconds_bucket",
        "streamtrain_snapshot_published_total",
        "streamtrain_snapshot_size_bytes",
        "streamtrain_serve_request_seconds_bucket",
        "streamtrain_serve_model_version",
        "streamtrain_serve_data_age_seconds",
        "streamtrain_serve_swaps_total",
        "streamtrain_serve_rejected_snapshots_total",
        # Delayed labels: join rate, label delay, expired, dead letters, state, log drops.
        "streamtrain_join_emitted_samples_total",
        "streamtrain_join_label_delay_seconds_bucket",
        "streamtrain_join_expired_predictions_total",
        "streamtrain_join_dead_lettered_records_total",
        "streamtrain_join_pending_predictions_records",
        "streamtrain_serve_prediction_log_dropped_records_total",
    ):
        assert name in queried, f"the dashboard should chart {name}"


def test_counters_and_histograms_are_queried_as_rates() -> None:
    for expr in _expressions():
        for match in re.finditer(r"(streamtrain_[a-z0-9_]+_(?:total|bucket))(\{[^}]*\})?", expr):
            after = expr[match.end() :]
            assert after.startswith("["), f"{match.group(1)} needs a range, in {expr!r}"
            before = expr[: match.start()]
            assert re.search(r"\b(rate|increase)\(\s*$", before), (
                f"wrap {match.group(1)} in rate()/increase(), in {expr!r}"
            )
        if "_bucket" in expr:
            assert re.search(r"histogram_quantile\(0?\.\d+, sum by \(le\b", expr), (
                f"quantiles need histogram_quantile over buckets summed by le: {expr!r}"
            )
        for gauge in re.findall(r"rate\(\s*(streamtrain_[a-z0-9_]+)", expr):
            assert gauge.endswith(("_total", "_bucket", "_sum", "_count")), (
                f"rate() of gauge {gauge} is meaningless, in {expr!r}"
            )


def test_panels_use_the_provisioned_datasource_and_do_not_overlap() -> None:
    uids = {
        source["uid"]
        for path in DATASOURCES.glob("*.yml")
        for source in yaml.safe_load(path.read_text())["datasources"]
    }
    panels = _dashboard()["panels"]
    occupied: set[tuple[int, int]] = set()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} overflows the 24-column grid"
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert all(t["datasource"]["uid"] in uids for t in _targets(panel))
