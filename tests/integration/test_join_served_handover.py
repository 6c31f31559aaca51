"""Guarantee 7 end to end with predictions logged by a real server (``build_worker`` with
``serve.prediction_log`` on, multi-row requests included), not produced by the test, and a
``kill -9`` of the join replica that owns every partition in the middle of a hand-over: a
second replica joins the group, the first checkpoints and gives its partitions up, and is
killed before it can take one back (kills inside that checkpoint:
test_join_checkpoint_kills.py). Every label is joined exactly once, with the features the
server answered from."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from streamtrain.builders.server import build_worker
from streamtrain.config import Settings, load_settings
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import decode_binary
from tests.integration.join_harness import (
    FEATURES,
    JoinCase,
    by_id,
    join_metric,
    joined_once,
    kill_join,
    metrics_url,
    read_topic,
    reap,
    start_join,
    stop_join,
    wait_all_joined,
)
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import publish, wait
from tests.integration.trainer_harness import scrape

REQUESTS, ROWS = 60, 10  # 600 logged rows, ids "q-<request>/<row>"
ASSIGNED = "streamtrain_join_assigned_partitions"
SPEC = SampleSpec(feature_shape=(FEATURES,), task="binary")


def _server_settings(bootstrap: str, name: str, predictions: str) -> Settings:
    create_topics(bootstrap, [f"{name}-snapshots"])
    return load_settings(
        overrides={
            "kafka": {"bootstrap_servers": bootstrap},
            "topics": {"snapshots": f"{name}-snapshots", "predictions": predictions},
            "model": {
                "name": "linear",
                "task": "binary",
                "input_shape": [FEATURES],
                "params": {"standardize": False},
            },
            "serve": {"port": 0, "model_name": "m", "prediction_log": True},
        }
    )


def _serve_and_log(settings: Settings) -> dict[str, np.ndarray]:
    """Ask a real server REQUESTS requests of ROWS rows; row id -> the features sent."""
    sent: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(7)
    worker = build_worker(settings)
    url = worker.start()
    try:
        before = _log_counts(url)  # the process's counters: other servers may have added
        publish(settings, 1)
        wait(
            lambda: httpx.get(f"{url}/v2/health/ready", timeout=REQUEST_S).status_code == 200,
            "ready",
        )
        with httpx.Client(timeout=30) as client:
            for r in range(REQUESTS):
                rows = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
                body = {
                    "id": f"q-{r}",
                    "inputs": [{"name": "input", "shape": [ROWS, FEATURES], "datatype": "FP32",
                                "data": rows.ravel().tolist()}],
                }  # fmt: skip
                response = client.post(f"{url}/v2/models/m/infer", json=body)
                assert response.status_code == 200, response.text
                assert response.json()["id"] == f"q-{r}"
                sent.update({f"q-{r}/{i}": row for i, row in enumerate(rows)})

        def logged() -> float:
            return _log_counts(url)["logged"] - before["logged"]

        wait(lambda: logged() >= len(sent), "every served row logged", 60)
        after = _log_counts(url)
        assert after == {**before, "logged": before["logged"] + len(sent)}, (before, after)
    finally:
        worker.stop()
    return sent


def _log_counts(url: str) -> dict[str, float]:
    """The prediction log's counters on the server's /metrics: records logged, and dropped
    by reason."""
    counts: dict[str, float] = {"logged": 0.0}
    for name, value in scrape(f"{url}/metrics").items():
        if name == "streamtrain_serve_prediction_log_records_total":
            counts["logged"] = value
        elif name.startswith("streamtrain_serve_prediction_log_dropped_records_total"):
            counts[name] = value
    return counts


def _wait_below(url: str, name: str, below: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while scrape(url).get(name, float("inf")) >= below:
        assert time.monotonic() < deadline, f"{name} stayed at or above {below} for {timeout} s"
        time.sleep(0.02)  # poll interval of a condition wait


@pytest.mark.kafka_client
def test_served_predictions_join_exactly_once_across_kill_9_in_a_handover(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=2)
    sent = _serve_and_log(
        _server_settings(case.kafka.bootstrap_servers, unique_name, case.topics.predictions)
    )
    logged = by_id(read_topic(case.kafka, case.topics.predictions))
    assert sorted(logged) == sorted(sent)  # the server logged every row once, keyed by row id
    assert {p.partition for found in logged.values() for p in found} == {0, 1}

    labels = {rid: int(rid.rsplit("/", 1)[1]) % 2 for rid in sorted(sent)}
    # Checkpoints only at assignment and hand-over: the kill leaves samples emitted after the
    # last checkpoint, which the partitions' next owner must find and not emit again.
    extra = {"STREAMTRAIN_JOIN__CHECKPOINT_EVERY_S": "300", "STREAMTRAIN_JOIN__WINDOW_S": "600"}
    first_env, second_env = (case.env(extra) for _ in range(2))
    first = start_join(first_env)
    second: subprocess.Popen[str] | None = None
    outputs: list[str] = []
    try:
        join_metric(metrics_url(first_env), ASSIGNED, 1.5, timeout=60)  # owns both pairs
        ids = sorted(labels)
        case.labels({rid: labels[rid] for rid in ids[:300]})
        at_kill = len(case.samples(150, timeout=60))
        second = start_join(second_env)
        # The second replica joins the group: the first gives its partitions up (checkpoint,
        # revoke; its gauge drops) to be handed one back, and is killed in that hand-over.
        _wait_below(metrics_url(first_env), ASSIGNED, 1.5, timeout=60)
        outputs.append(kill_join(first))
        join_metric(metrics_url(second_env), ASSIGNED, 1.5, timeout=60)  # takes both over
        case.labels({rid: labels[rid] for rid in ids[300:]})
        wait_all_joined(case.kafka, case.topics.samples, len(sent), timeout=120)
        code, output = stop_join(second)
        outputs.append(output)
        assert code == 0, output
    finally:
        reap((first, second), outputs)

    assert at_kill < len(sent), "the kill came after the whole stream: nothing to recover"
    # Killed after checkpointing what it handed back (the kills inside that checkpoint:
    # test_join_checkpoint_kills.py), before it could take a partition back.
    assert "handed back partitions" in outputs[0], outputs[0]
    samples = joined_once(case.kafka, case.topics.samples, sent)
    values = [sample.value or b"" for sample in samples.values()]
    decoded = decode_binary(SPEC, values, np.zeros(len(values)))
    assert not decoded.rejects
    for row, rid in enumerate(samples):
        np.testing.assert_array_equal(decoded.features[row].reshape(-1), sent[rid], err_msg=rid)
        assert int(decoded.labels[row]) == labels[rid], rid
