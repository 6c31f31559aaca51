"""tests/promlint.py finds what ``promtool check metrics`` finds, and the three registries as
scraped pass it (the integration test test_audit_promlint checks the running processes)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streamtrain.metrics import JOIN_REGISTRY, SERVER_REGISTRY, TRAINER_REGISTRY
from tests.promlint import lint

# (exposition, a finding promtool reports for it)
BAD = {
    "counter without _total": (
        "# HELP a_seconds x\n# TYPE a_seconds counter\na_seconds 1\n",
        'counter metrics should have "_total" suffix',
    ),
    "gauge with _total": (
        "# HELP q_total x\n# TYPE q_total gauge\nq_total 1\n",
        'non-counter metrics should not have "_total" suffix',
    ),
    "no help": ("# TYPE b_bytes gauge\nb_bytes 1\n", "no help text"),
    "milliseconds": (
        "# HELP c_milliseconds x\n# TYPE c_milliseconds gauge\nc_milliseconds 1\n",
        'use base unit "seconds" instead of "milliseconds"',
    ),
    "abbreviated unit": (
        "# HELP d_ms x\n# TYPE d_ms gauge\nd_ms 1\n",
        "metric names should not contain abbreviated units",
    ),
    "camelCase": (
        "# HELP eFoo x\n# TYPE eFoo gauge\neFoo 1\n",
        "metric names should be written in 'snake_case' not 'camelCase'",
    ),
    "colon": ("# HELP f:g x\n# TYPE f:g gauge\nf:g 1\n", "metric names should not contain ':'"),
    "type in name": (
        "# HELP h_gauge x\n# TYPE h_gauge gauge\nh_gauge 1\n",
        "metric name should not include type 'gauge'",
    ),
    "le on a gauge": (
        '# HELP i x\n# TYPE i gauge\ni{le="1"} 1\n',
        'non-histogram metrics should not have "le" label',
    ),
    "_count on a gauge": (
        "# HELP j_count x\n# TYPE j_count gauge\nj_count 1\n",
        'non-histogram and non-summary metrics should not have "_count" suffix',
    ),
    "duplicate series": (
        '# HELP k x\n# TYPE k gauge\nk{a="1"} 1\nk{a="1"} 2\n',
        "duplicate series",
    ),
    "second TYPE": (
        "# HELP l x\n# TYPE l gauge\nl 1\n# TYPE l gauge\n",
        "second TYPE line for metric l",
    ),
    "buckets not cumulative": (
        "# HELP m_seconds x\n# TYPE m_seconds histogram\n"
        'm_seconds_bucket{le="1"} 5\nm_seconds_bucket{le="+Inf"} 3\n'
        "m_seconds_count 3\nm_seconds_sum 1\n",
        "buckets not cumulative",
    ),
    "no +Inf bucket": (
        '# HELP n_seconds x\n# TYPE n_seconds histogram\nn_seconds_bucket{le="1"} 5\n'
        "n_seconds_count 5\nn_seconds_sum 1\n",
        'no le="+Inf" bucket',
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_rule_finds_its_fault(case: str) -> None:
    text, finding = BAD[case]
    found = lint(text)
    assert any(finding in line for line in found), found


def test_a_well_formed_registry_is_clean() -> None:
    registry = CollectorRegistry()
    Counter("ok_requests", "Requests.", ["outcome"], registry=registry).labels("ok").inc()
    Gauge("ok_queue_records", "Queued.", registry=registry).set(3)
    Histogram("ok_latency_seconds", "Latency.", registry=registry).observe(0.2)
    assert lint(generate_latest(registry).decode()) == []


@pytest.mark.parametrize(
    "registry",
    [TRAINER_REGISTRY, SERVER_REGISTRY, JOIN_REGISTRY],
    ids=["trainer", "server", "join"],
)
def test_the_registries_as_scraped_pass(registry: CollectorRegistry) -> None:
    assert lint(generate_latest(registry).decode()) == []
