"""The real ``/metrics`` of a trainer, a server and a join pass ``promtool check metrics``
(the rules of :mod:`tests.promlint`) before any event and after traffic, good and bad, and
no counter appears only on its first event.

Traffic: JSON samples with malformed records among them (the trainer learns, dead-letters
and publishes), the server loads a snapshot and answers good and bad infer requests, the join
pairs predictions with labels and dead-letters malformed labels.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from streamtrain.kafka import KafkaConnection, create_topics
from tests.integration.cli_process import await_output, running_cli
from tests.integration.join_harness import (
    join_env,
    new_topics,
    produce_labels,
    produce_predictions,
    wait_for_records,
)
from tests.integration.process_output import REQUEST_S, ProcessOutput, await_condition
from tests.integration.trainer_harness import (
    FEATURES,
    hyperplane_stream,
    produce_json,
    trainer_env,
)
from tests.promlint import lint


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=REQUEST_S) as response:
        return str(response.read().decode())


def _counters(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text) if f.type == "counter"}


def _value(text: str, name: str) -> float:
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


def _check(process: str, before: str, after: str) -> None:
    assert lint(before) == [], f"{process} at start: {lint(before)}"
    assert lint(after) == [], f"{process} after traffic: {lint(after)}"
    late = _counters(after) - _counters(before)
    assert late == set(), f"{process}: counters that appeared only on their first event: {late}"


def _infer(base: str, body: object) -> int:
    return httpx.post(
        f"{base}/v2/models/streamtrain/infer", json=body, timeout=REQUEST_S
    ).status_code


def _server_traffic(base: str, output: ProcessOutput) -> None:
    await_condition(
        lambda: httpx.get(f"{base}/v2/health/ready", timeout=REQUEST_S).status_code == 200,
        "the server's first snapshot",
        timeout=120,
    )
    good = {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32",
                        "data": [0.1] * FEATURES}]}  # fmt: skip
    assert _infer(base, good) == 200, output.text()
    bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert _infer(base, bad) == 400
    assert httpx.get(f"{base}/v2/models/nope", timeout=REQUEST_S).status_code == 404


def test_trainer_and_server_metrics_pass_promtool_before_and_after_traffic(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, [f"{unique_name}-samples", f"{unique_name}-snapshots"])
    env = trainer_env(kafka_bootstrap, unique_name, tmp_path / "ckpt")
    serve = {**env, "STREAMTRAIN_SERVE__PORT": "0"}
    with (
        running_cli(["train"], env) as (_, trained),
        running_cli(["serve"], serve) as (_, served),
    ):
        trainer_url = await_output(trained, r"trainer metrics: +(\S+)")
        server_url = await_output(served, r"metrics: +GET +(\S+)")
        base = await_output(served, r"serving model '\S+' on (\S+)")
        await_condition(
            lambda: "streamtrain_train_learning_rate" in _text(trainer_url), "the trainer's run"
        )
        await_condition(
            lambda: "no valid snapshot on the topic yet" in served.text(), "the server's scan"
        )
        trainer_before, server_before = _text(trainer_url), _text(server_url)
        produce_json(kafka_bootstrap, f"{unique_name}-samples", *hyperplane_stream(200), 40)
        _server_traffic(base, served)
        await_condition(
            lambda: _value(_text(trainer_url), "streamtrain_ingest_rejected_records_total") >= 5,
            "the malformed samples dead-lettered",
        )
        trainer_after, server_after = _text(trainer_url), _text(server_url)
    _check("trainer", trainer_before, trainer_after)
    _check("server", server_before, server_after)


def test_join_metrics_pass_promtool_before_and_after_traffic(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    topics = new_topics(kafka_connection, f"{unique_name}-join", 1)
    env = join_env(kafka_connection, topics, tmp_path / "join")
    with running_cli(["join"], env) as (_, output):
        url = await_output(output, r"join metrics: +(\S+)")
        before = _text(url)
        ids = [f"r-{i}" for i in range(20)]
        produce_predictions(kafka_connection, topics.predictions, ids, time.time())
        malformed = {
            "bad-json": b'{"id": "r-1", "label": ',
            "empty": b"",
            "no-id": json.dumps({"label": 1}).encode(),
            "large": b" " * 900_000,
        }
        produce_labels(kafka_connection, topics.labels, dict.fromkeys(ids, 1), malformed)
        await_condition(
            lambda: _value(_text(url), "streamtrain_join_dead_lettered_records_total") >= 3,
            "the malformed labels dead-lettered",
        )
        # and the valid ones are still joined: training goes on past bad labels
        assert len(wait_for_records(kafka_connection, topics.samples, len(ids), 60)) == len(ids)
        after = _text(url)
    _check("join", before, after)
