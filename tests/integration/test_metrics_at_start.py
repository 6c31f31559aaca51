"""The real ``/metrics`` of a fresh trainer, server and join, before any data (issue 22):

1. every counter with a closed set of label values is there at 0, every value of it, so
   ``increase()`` sees the first event;
2. gauges with no value yet are absent rather than a misleading 0, and metrics that do not
   apply to the process are not exported;
3. every series an alert rule in ``deploy/prometheus/alerts.yml`` selects exists at start
   (label matchers included), or ``docs/metrics.md`` says when it appears (a series listed
   there may already be present: the consumer lag appears as soon as a fetch reports it).
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamtrain.join.partition_state import DEAD_LETTER_REASONS, EXPIRY_CAUSES
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.serve.protocol.dataplane import OUTCOMES
from streamtrain.serve.weights.checks import SLOT_REASONS
from streamtrain.snapshot.verify import RejectReason
from streamtrain.train.promotion_gate import HoldReason
from streamtrain.wire.rejects import REASONS
from tests.integration.cli_process import await_output, running_cli
from tests.integration.join_harness import join_env, new_topics
from tests.integration.process_output import REQUEST_S, await_condition
from tests.integration.trainer_harness import trainer_env

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DOC = ROOT / "docs" / "metrics.md"
LATER_HEADING = "## Series that appear later"
Sample = tuple[str, dict[str, str], float]


def _samples(url: str) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=REQUEST_S) as response:
        text = response.read().decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _values(samples: list[Sample], name: str, label: str) -> dict[str, float]:
    return {labels[label]: value for n, labels, value in samples if n == name}


def _later() -> set[str]:
    """The series docs/metrics.md says appear after the start (bullets under its heading)."""
    text = DOC.read_text()
    assert LATER_HEADING in text, f"docs/metrics.md lacks '{LATER_HEADING}'"
    section = text.split(LATER_HEADING, 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^- `(\w+)`", section, re.M))


def _selectors(node: Any) -> Iterator[Any]:
    """Every vector selector of a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
        return
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector", "args"):
        child = getattr(node, attr, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None and not isinstance(item, str | int | float):
                yield from _selectors(item)


def _matches(labels: dict[str, str], matcher: Any) -> bool:
    value = labels.get(matcher.name, "")
    op = str(matcher.op).rsplit(".", 1)[-1]
    if op == "Equal":
        return value == matcher.value
    if op == "NotEqual":
        return value != matcher.value
    found = re.fullmatch(matcher.value, value) is not None
    return found if op == "Re" else not found


def _scrape_trainer(kafka_bootstrap: str, name: str, tmp_path: Path) -> list[Sample]:
    create_topics(kafka_bootstrap, [f"{name}-samples"])
    env = trainer_env(kafka_bootstrap, name, tmp_path / "ckpt")
    with running_cli(["train"], env) as (_, output):
        url = await_output(output, r"trainer metrics: +(\S+)")
        # the run has started (checkpoint restored) once the learning rate is exported
        await_condition(
            lambda: any(n == "streamtrain_train_learning_rate" for n, _, _ in _samples(url)),
            "the trainer's run to start",
        )
        return _samples(url)


def _scrape_server(kafka_bootstrap: str, name: str) -> list[Sample]:
    env = trainer_env(kafka_bootstrap, name, Path("unused"), {"STREAMTRAIN_SERVE__PORT": "0"})
    with running_cli(["serve"], env) as (_, output):
        url = await_output(output, r"metrics: +GET +(\S+)")
        await_condition(
            lambda: "no valid snapshot on the topic yet" in output.text(), "the server's scan"
        )
        return _samples(url)


def _scrape_join(kafka: KafkaConnection, name: str, tmp_path: Path) -> list[Sample]:
    topics = new_topics(kafka, f"{name}-join", 1)
    with running_cli(["join"], join_env(kafka, topics, tmp_path / "join")) as (_, output):
        url = await_output(output, r"join metrics: +(\S+)")
        return _samples(url)


def test_fresh_processes_export_what_alerts_need_and_nothing_misleading(
    kafka_bootstrap: str, kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    trainer = _scrape_trainer(kafka_bootstrap, unique_name, tmp_path)
    server = _scrape_server(kafka_bootstrap, unique_name)
    join = _scrape_join(kafka_connection, unique_name, tmp_path)

    # 1. closed label sets, every value at 0
    zero: list[tuple[list[Sample], str, str, set[str]]] = [
        (trainer, "streamtrain_ingest_rejected_records_total", "reason", set(REASONS)),
        (trainer, "streamtrain_ingest_records_total", "topic", {f"{unique_name}-samples"}),
        (trainer, "streamtrain_ingest_offset_resets_total", "partition", {"0"}),
        (trainer, "streamtrain_ingest_partition_waits_expired_total", "partition", {"0"}),
        (trainer, "streamtrain_train_held_snapshots_total", "reason", set(get_args(HoldReason))),
        (
            server,
            "streamtrain_serve_rejected_snapshots_total",
            "reason",
            {*get_args(RejectReason), *SLOT_REASONS},
        ),
        (server, "streamtrain_serve_requests_total", "outcome", set(OUTCOMES)),
        (join, "streamtrain_join_expired_predictions_total", "cause", set(EXPIRY_CAUSES)),
    ]
    for samples, name, label, expected in zero:
        values = _values(samples, name, label)
        assert set(values) == expected, f"{name}: {label} values {sorted(values)}"
        assert set(values.values()) == {0.0}, f"{name} is not 0 at start: {values}"
    resets = [labels for n, labels, _ in trainer if n == "streamtrain_ingest_offset_resets_total"]
    assert resets == [{"partition": "0", "policy": "earliest"}], "the configured policy"
    dead = {
        (labels["source"], labels["reason"])
        for n, labels, value in join
        if n == "streamtrain_join_dead_lettered_records_total" and value == 0
    }
    assert dead == set(DEAD_LETTER_REASONS)

    # 2. no made-up values, nothing that does not apply
    names = {n for n, _, _ in trainer}
    for absent in (
        "streamtrain_train_loss",
        "streamtrain_train_prequential_accuracy_ratio",
        "streamtrain_train_prequential_mae",
        "streamtrain_train_allreduce_seconds_count",
        "streamtrain_train_cuda_memory_allocated_bytes",
        "streamtrain_train_data_watermark_timestamp_seconds",
        "streamtrain_snapshot_version",
        "streamtrain_snapshot_size_bytes",
    ):
        assert absent not in names, f"a fresh single-rank CPU trainer exports {absent}"
    rate = [v for n, _, v in trainer if n == "streamtrain_train_learning_rate"]
    assert rate == [0.01], "the configured rate (optimizer.lr), once the run started"
    assert [v for n, _, v in trainer if n == "streamtrain_train_samples_per_second"] == [0.0]

    # 3. every series an alert selects is there from the start, or documented to come later
    later = _later()
    everything = trainer + server + join
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    missing = []
    for rule in rules:
        for selector in _selectors(promql_parser.parse(rule["expr"])):
            name = selector.name
            if name == "up" or name in later:  # `up` is Prometheus's own
                continue
            matchers = [m for m in selector.matchers.matchers if m.name != "__name__"]
            if not any(
                n == name and all(_matches(labels, m) for m in matchers)
                for n, labels, _ in everything
            ):
                missing.append(f"{rule['alert']}: {selector.prettify()}")
    assert missing == [], f"alert series absent at start and not in docs/metrics.md: {missing}"
    selected = {s.name for r in rules for s in _selectors(promql_parser.parse(r["expr"]))}
    assert later <= selected, f"docs/metrics.md lists series no alert needs: {later - selected}"
