"""Prometheus config, alert rules and dashboard queries: valid PromQL over exported series.

Without root there is no `promtool` (no pip or npm package ships it), so every expression is
parsed with PyPI's ``promql-parser`` (a Rust port of Prometheus's own parser that also checks
function argument types). Where `promtool` is on PATH, `promtool check config` and `promtool
check rules` run as well; elsewhere those two tests skip and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.unit.test_deploy_dashboard import exported  # noqa: F401  (the scrape fixture)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streamtrain.json"
_NAME = re.compile(r"streamtrain_[a-z0-9_]+")
# Grafana replaces these before Prometheus sees a query.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _rules() -> list[dict[str, Any]]:
    config = yaml.safe_load(CONFIG.read_text())
    rules = []
    for name in config["rule_files"]:
        groups = yaml.safe_load((PROMETHEUS_DIR / name).read_text())["groups"]
        rules += [rule for group in groups for rule in group["rules"]]
    return rules


def _dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    for variable, value in _GRAFANA_VARIABLES.items():
        exprs = [e.replace(variable, value) for e in exprs]
    return exprs


def test_rule_files_are_mounted_where_the_config_looks() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = compose["services"]["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if "config.file" in a)
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in prometheus["volumes"] if "/" in v}
    config_dir = Path(config_path).parent
    for name in yaml.safe_load(CONFIG.read_text())["rule_files"]:
        in_container = str(config_dir / name)
        assert in_container in mounts, f"{in_container} is not mounted"
        assert mounts[in_container] == PROMETHEUS_DIR / name


def test_alerts_parse_and_query_only_exported_series(exported: dict[str, set[str]]) -> None:  # noqa: F811
    rules = _rules()
    assert rules, "no alert rules loaded"
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises ValueError on invalid PromQL
        unknown = set(_NAME.findall(rule["expr"])) - set().union(*exported.values())
        assert not unknown, f"{rule['alert']} queries series nobody exports: {unknown}"
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_the_parser_rejects_broken_promql() -> None:
    """The PromQL check is not vacuous."""
    for broken in ("sum(rate(x[5m])", "rate(streamtrain_train_samples_total)", "x{a=}"):
        with pytest.raises(ValueError):
            promql_parser.parse(broken)


def test_alerts_cover_what_operators_page_on() -> None:
    by_expr = {rule["alert"]: rule["expr"] for rule in _rules()}
    checkpoint = by_expr["StreamtrainCheckpointsNotWritten"]
    assert "streamtrain_train_samples_total" in checkpoint, "only a busy trainer may page"
    nothing = by_expr["StreamtrainNothingLearned"]
    assert "streamtrain_ingest_samples_total" in nothing and "unless" in nothing
    errors = by_expr["StreamtrainInferenceErrors"]
    assert 'outcome="error"' in errors, "only server faults, never client hang-ups or 4xx"
    assert "streamtrain_serve_data_age_seconds" in by_expr["StreamtrainServersStale"]
    assert "streamtrain_kafka_reachable" in by_expr["StreamtrainKafkaUnreachable"]


def test_dashboard_queries_are_valid_promql() -> None:
    exprs = _dashboard_expressions()
    assert exprs
    for expr in exprs:
        promql_parser.parse(expr)


def _promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        # A tool outside the Python install (promtool needs root): its absence is no broken
        # install, and the promql-parser checks run everywhere.
        pytest.skip("no promtool on PATH; the promql-parser checks above cover the expressions")
    return binary


def test_promtool_check_config() -> None:
    result = subprocess.run(
        [_promtool(), "check", "config", str(CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    files = [str(PROMETHEUS_DIR / n) for n in yaml.safe_load(CONFIG.read_text())["rule_files"]]
    result = subprocess.run(
        [_promtool(), "check", "rules", *files], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_dashboard_queries(tmp_path: Path) -> None:
    """promtool has no query checker of its own, so each dashboard query becomes a recording
    rule in a scratch file for `promtool check rules` to parse."""
    binary = _promtool()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, expr in enumerate(_dashboard_expressions())
    ]
    scratch = tmp_path / "dashboard-rules.yml"
    scratch.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [binary, "check", "rules", str(scratch)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
