"""The delayed-labels demo's pure parts: its plan, the application's pieces, the join's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from streamtrain.config import load_settings
from streamtrain.demo.app_status import AppStatus
from streamtrain.demo.dashboard import DemoStats, plain_line, render
from streamtrain.demo.join_view import DelayedLabelsWatch, JoinStats, histogram_quantile
from streamtrain.demo.label_app import (
    LabelSchedule,
    infer_request,
    parse_args,
    predicted_classes,
    row_id,
)
from streamtrain.demo.plan import DemoPlan
from streamtrain.demo.scrape import parse_metrics
from streamtrain.wire.prediction_record import check_request_id


def _plan(labels: str = "delayed") -> DemoPlan:
    return DemoPlan.build(
        "hyperplane",
        rate=500,
        run_dir=Path("/tmp/r"),
        bootstrap_servers="127.0.0.1:1234",
        server_port=8123,
        trainer_port=9123,
        labels="delayed" if labels == "delayed" else "inline",
        join_port=9124,
    )


def test_delayed_plan_adds_the_join_and_replaces_the_producer() -> None:
    plan = _plan()
    commands = plan.commands()
    assert list(commands) == ["server", "trainer", "join", "producer"]
    join = commands["join"]
    assert join[3] == "join"
    assert join[join.index("--metrics-port") + 1] == "9124"
    assert join[join.index("--state-dir") + 1] == "/tmp/r/join-state"
    app = commands["producer"]
    assert app[1:3] == ["-m", "streamtrain.demo.label_app"]
    assert app[app.index("--infer-url") + 1] == plan.infer_url
    assert app[app.index("--labels-topic") + 1] == plan.topics.labels
    assert app[app.index("--status-path") + 1] == str(plan.status_path)
    assert plan.ready_urls == {
        "trainer": plan.trainer_ready_url,
        "join": "http://127.0.0.1:9124/health/ready",
    }
    topics = plan.topics
    assert {topics.predictions, topics.labels, topics.labels_dead_letter} <= set(plan.topic_names)


def test_inline_plan_has_no_join_and_no_label_topics() -> None:
    plan = _plan("inline")
    assert set(plan.commands()) == {"server", "trainer", "producer"}
    assert plan.commands()["producer"][3] == "produce"
    assert plan.ready_urls == {"trainer": plan.trainer_ready_url}
    assert plan.topics.predictions not in plan.topic_names
    assert "STREAMTRAIN_SERVE__PREDICTION_LOG" not in plan.child_env()


def test_delayed_env_is_valid_settings_for_server_and_join(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = _plan()
    for key, value in plan.child_env().items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.serve.prediction_log is True
    # Labels come 0.5-3 s after serving: the window must outlast the longest delay.
    assert settings.join.window_s > 3.0


def test_row_ids_follow_the_servers_rule_and_fit_the_id_limit() -> None:
    assert row_id("demo-1", 0, 1) == "demo-1"
    assert [row_id("demo-1", r, 3) for r in range(3)] == ["demo-1/0", "demo-1/1", "demo-1/2"]
    check_request_id(row_id("demo-99999999", 63, 64))  # raises if over the limit


def test_label_schedule_releases_labels_in_time_order_only_when_due() -> None:
    schedule = LabelSchedule()
    for at, rid in ((3.0, "c"), (1.0, "a"), (2.0, "b")):
        schedule.add(at, rid, label=1, predicted=0)
    assert schedule.due(0.5) == []
    assert [d.row_id for d in schedule.due(2.0)] == ["a", "b"]
    assert len(schedule) == 1
    assert [d.row_id for d in schedule.due(10.0)] == ["c"]


def test_infer_request_and_response_parsing() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    body = infer_request("demo-4", rows)
    assert body["id"] == "demo-4"
    assert body["inputs"][0]["shape"] == [2, 3]
    assert body["inputs"][0]["data"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    doc = {"outputs": [{"name": "predicted_class", "data": [1, 0]}]}
    assert predicted_classes(doc, 2) == [1, 0]
    with pytest.raises(ValueError, match="predicted_class"):
        predicted_classes(doc, 3)


def test_status_file_round_trips_and_a_torn_one_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    status = AppStatus(bootstrap_samples=96, requests=10, labels_sent=7, served_accuracy=0.75)
    status.write(path)
    assert AppStatus.read(path) == status
    path.write_text('{"requests": ')
    assert AppStatus.read(path) is None
    assert AppStatus.read(tmp_path / "missing.json") is None


def test_app_arguments_are_checked() -> None:
    base = ["--infer-url", "http://x", "--bootstrap-servers", "b:1", "--samples-topic", "s"]
    base += ["--labels-topic", "l", "--status-path", "/tmp/s.json"]
    assert parse_args(base).delay_max == 3.0
    with pytest.raises(SystemExit):
        parse_args([*base, "--delay-min", "4", "--delay-max", "1"])


_JOIN_METRICS = """
# TYPE streamtrain_join_emitted_samples_total counter
streamtrain_join_emitted_samples_total{outcome="joined"} 900.0
streamtrain_join_emitted_samples_total{outcome="default_label"} 100.0
# TYPE streamtrain_join_label_delay_seconds histogram
streamtrain_join_label_delay_seconds_bucket{le="0.5"} 0.0
streamtrain_join_label_delay_seconds_bucket{le="1.0"} 200.0
streamtrain_join_label_delay_seconds_bucket{le="2.5"} 800.0
streamtrain_join_label_delay_seconds_bucket{le="5.0"} 900.0
streamtrain_join_label_delay_seconds_bucket{le="+Inf"} 900.0
streamtrain_join_label_delay_seconds_count 900.0
streamtrain_join_label_delay_seconds_sum 1500.0
# TYPE streamtrain_join_dead_lettered_records_total counter
streamtrain_join_dead_lettered_records_total{source="labels",reason="late"} 3.0
streamtrain_join_dead_lettered_records_total{source="labels",reason="unknown_id"} 1.0
streamtrain_join_dead_lettered_records_total{source="predictions",reason="unknown_id"} 1.0
"""


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    scrape = parse_metrics(_JOIN_METRICS)
    # rank 450 of 900 falls in (1.0, 2.5] holding 200..800: 1.0 + 1.5 * 250 / 600.
    delay = "streamtrain_join_label_delay_seconds"
    assert histogram_quantile(scrape, delay, 0.5) == pytest.approx(1.625)
    assert histogram_quantile(scrape, delay, 0.99) == pytest.approx(2.5 + 2.5 * 91 / 100)
    assert histogram_quantile(parse_metrics(""), delay, 0.5) is None


def test_join_numbers_reach_the_dashboard_and_the_summary(tmp_path: Path) -> None:
    status_path = tmp_path / "status.json"
    first = AppStatus(requests=50, rows_served=1000, labels_sent=990, served_accuracy=0.6)
    first.write(status_path)
    watch = DelayedLabelsWatch(status_path)
    watch.observe(parse_metrics(_JOIN_METRICS), None)
    AppStatus(requests=90, rows_served=1800, labels_sent=1700, served_accuracy=0.9).write(
        status_path
    )
    watch.observe(parse_metrics(_JOIN_METRICS), None)
    AppStatus(requests=99, rows_served=2000, labels_sent=1900, served_accuracy=0.85).write(
        status_path
    )
    stats = watch.observe(parse_metrics(_JOIN_METRICS), None)
    assert (stats.joined, stats.default_labelled, stats.dead_lettered_total) == (900, 100, 5)
    assert isinstance(stats, JoinStats)
    line = plain_line(DemoStats(join=stats))
    assert "joined 900" in line and "dlq 5" in line and "served-acc 0.850" in line
    console = Console(record=True, width=160)
    console.print(render(DemoStats(join=stats), "t"))
    assert "joined samples" in console.export_text()
    summary = "\n".join(watch.lines())
    # The first quoted accuracy is the first over a full window (1,000 labels), not 0.6.
    assert "rows): 0.900 at the first full window, 0.900 at best, 0.850 at the end" in summary
    assert "dead-lettered records: 5 (late 3, unknown_id 2)" in summary
    assert json.loads(status_path.read_text())["requests"] == 99


def test_an_unknown_label_mode_is_a_one_line_error() -> None:
    from typer.testing import CliRunner

    import streamtrain.cli  # noqa: F401  (registers every subcommand)
    from streamtrain.cli.command import app

    done = CliRunner().invoke(app, ["demo", "--labels", "later", "--duration", "5"])
    assert done.exit_code != 0
    assert isinstance(done.exception, SystemExit), "a clean exit, not an exception"
    assert "--labels 'later' is not a mode; use inline or delayed" in done.output
    assert "Traceback" not in done.output
