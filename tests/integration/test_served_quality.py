"""Served quality on the real broker: what a `streamtrain join` exports per model version and
arm on its /metrics equals an independent computation over the predictions and labels topics
read back by the test (scikit-learn's log loss, accuracy and AUC)."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from streamtrain.kafka import KafkaConnection, record_producer
from streamtrain.wire.prediction_record import (
    PredictionRecord,
    decode_prediction,
    encode_prediction,
)
from tests.integration.join_harness import JoinCase, joining, metrics_url, read_topic, served_sample
from tests.integration.trainer_harness import scrape

pytestmark = pytest.mark.kafka_client

IDS = 400
KEEP = 3  # versions 1..5 are served: 1 and 2 fold into "older"


def _produce(kafka: KafkaConnection, predictions: str, labels: str, served_at: float) -> int:
    """Predictions of 5 versions on the live and candidate arms, a shadow row for every
    fourth id, labels for most ids; returns the number of labelled rows expected."""
    rng = np.random.default_rng(7)
    producer = record_producer(kafka, linger_ms=5)
    labelled = 0
    for i in range(IDS):
        rid = f"q-{i}"
        version = 1 + i % 5
        arm = "candidate" if i % 3 == 0 else "live"
        rows = [(version, arm)] + ([(version + 1, "shadow")] if i % 4 == 0 else [])
        for v, a in rows:
            p = float(rng.uniform(0.02, 0.98))
            record = PredictionRecord(
                rid, served_at, v, "run", (1 - p, p), served_sample(i, served_at), a
            )
            producer.send(predictions, encode_prediction(record), key=rid.encode())
        if i % 10 != 9:  # a tenth of the ids never get a label (coverage below 1)
            label = {"id": rid, "label": int(rng.integers(0, 2))}
            producer.send(labels, json.dumps(label).encode(), key=rid.encode())
            labelled += len(rows)
    producer.flush(60)
    producer.close(10)
    return labelled


def _expected(
    kafka: KafkaConnection, predictions: str, labels: str
) -> dict[tuple[str, str], dict[str, float]]:
    """Per (version label, arm): served and labelled rows, log loss, accuracy and AUC,
    computed from the topics as read back."""
    served = [decode_prediction(r.value) for r in read_topic(kafka, predictions)]
    truth = {}
    for record in read_topic(kafka, labels):
        body = json.loads(record.value or b"{}")
        truth.setdefault(body["id"], int(body["label"]))  # the first label wins
    newest = sorted({p.model_version for p in served})[-KEEP:]
    groups: dict[tuple[str, str], list[tuple[tuple[float, ...], int | None]]] = defaultdict(list)
    for p in served:
        version = str(p.model_version) if p.model_version in newest else "older"
        groups[(version, p.arm)].append((p.outputs, truth.get(p.request_id)))
    out = {}
    for key, rows in groups.items():
        scored = [(s, y) for s, y in rows if y is not None]
        outputs = np.array([s for s, _ in scored], np.float64).reshape(-1, 2)
        scores = outputs[:, 1]
        ys = np.array([y for _, y in scored])
        figures = {"served": float(len(rows)), "labelled": float(len(scored))}
        if scored:
            figures["log_loss"] = log_loss(ys, scores, labels=[0, 1])
            figures["accuracy"] = accuracy_score(ys, outputs.argmax(axis=1))
            if 0 < ys.sum() < len(ys):
                figures["auc"] = roc_auc_score(ys, scores)
        out[key] = figures
    return out


def test_served_quality_per_version_and_arm_matches_the_topics(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=2)
    topics = case.topics
    env = case.env(
        {
            "STREAMTRAIN_JOIN__QUALITY_VERSIONS": str(KEEP),
            "STREAMTRAIN_JOIN__QUALITY_WINDOW_S": "3600",
        },
    )
    with joining(env):
        url = metrics_url(env)
        labelled = _produce(kafka_connection, topics.predictions, topics.labels, served_at=1.0e9)
        expected = _expected(kafka_connection, topics.predictions, topics.labels)
        assert sum(f["labelled"] for f in expected.values()) == labelled
        found = _wait_for_labelled(url, labelled)
    for (version, arm), want in expected.items():
        labels = f'{{arm="{arm}",version="{version}"}}'
        assert found[f"streamtrain_quality_served_rows_total{labels}"] == want["served"], labels
        assert found[f"streamtrain_quality_labelled_rows_total{labels}"] == want["labelled"], labels
        coverage = found[f"streamtrain_quality_label_coverage_ratio{labels}"]
        assert coverage == pytest.approx(want["labelled"] / want["served"], abs=1e-9)
        if want["labelled"] == 0:
            continue
        # served outputs are float32 on the wire: equal within their rounding
        window_rows = found[f"streamtrain_quality_window_rows{labels}"]
        assert window_rows == want["labelled"], labels
        assert found[f"streamtrain_quality_window_log_loss{labels}"] == pytest.approx(
            want["log_loss"], rel=1e-6
        )
        loss_sum = found[f"streamtrain_quality_log_loss_total{labels}"]
        assert loss_sum / want["labelled"] == pytest.approx(want["log_loss"], rel=1e-6)
        assert found[f"streamtrain_quality_window_accuracy{labels}"] == pytest.approx(
            want["accuracy"], abs=1e-12
        )
        if "auc" in want:
            assert found[f"streamtrain_quality_window_auc{labels}"] == pytest.approx(
                want["auc"], abs=1e-9
            )
    # bounded cardinality: the kept versions and "older", nothing else
    versions = {
        key.split('version="')[1].split('"')[0]
        for key in found
        if key.startswith("streamtrain_quality_served_rows_total{")
    }
    assert versions == {"4", "5", "6", "older"}
    # a (version, arm) the topics never served is exported at 0
    for key, value in found.items():
        if key.startswith("streamtrain_quality_served_rows_total{"):
            arm = key.split('arm="')[1].split('"')[0]
            version = key.split('version="')[1].split('"')[0]
            assert value == expected.get((version, arm), {"served": 0.0})["served"], key


def _wait_for_labelled(url: str, labelled: int, timeout: float = 90.0) -> dict[str, float]:
    """Scrape until the labelled rows add up to ``labelled``; the scrape."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = scrape(url)
        except OSError:
            found = {}
        total = sum(
            v for k, v in found.items() if k.startswith("streamtrain_quality_labelled_rows_total{")
        )
        if math.isclose(total, labelled):
            return found
        assert time.monotonic() < deadline, f"labelled rows stayed at {total} of {labelled}"
        time.sleep(0.2)  # poll interval of a condition wait
