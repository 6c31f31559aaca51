"""Shared pieces of the served-quality tests: logged rows of several versions and arms, their
labels, the figures computed independently from the topics read back (scikit-learn), and a
scrape that waits for the join's labelled rows to add up."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from streamtrain.kafka import KafkaConnection, record_producer
from streamtrain.wire.prediction_record import (
    PredictionRecord,
    decode_prediction,
    encode_prediction,
)
from tests.integration.join_harness import read_topic, served_sample
from tests.integration.trainer_harness import scrape

Figures = dict[tuple[str, str], dict[str, float]]


def produce_rows(kafka: KafkaConnection, predictions: str, ids: int, served_at: float) -> int:
    """Rows of versions 1..5 on the live and candidate arms for ids ``q-0`` .. (a shadow row of
    the next version for every fourth id); returns how many rows."""
    rng = np.random.default_rng(7)
    producer = record_producer(kafka, linger_ms=5)
    count = 0
    for i in range(ids):
        rid = f"q-{i}"
        version = 1 + i % 5
        arm = "candidate" if i % 3 == 0 else "live"
        for v, a in [(version, arm)] + ([(version + 1, "shadow")] if i % 4 == 0 else []):
            p = float(rng.uniform(0.02, 0.98))
            record = PredictionRecord(
                rid, served_at, v, "run", (1 - p, p), served_sample(i, served_at), a
            )
            producer.send(predictions, encode_prediction(record), key=rid.encode())
            count += 1
    producer.flush(60)
    producer.close(10)
    return count


def labelled_ids(ids: int) -> list[int]:
    """The ids that get a label: all but a tenth (label coverage below 1)."""
    return [i for i in range(ids) if i % 10 != 9]


def produce_labels(kafka: KafkaConnection, labels: str, which: Iterable[int]) -> None:
    """A 0/1 label for each id number in ``which`` (drawn from the id, so reruns agree)."""
    producer = record_producer(kafka, linger_ms=5)
    for i in which:
        rid = f"q-{i}"
        body = {"id": rid, "label": int(np.random.default_rng(i).integers(0, 2))}
        producer.send(labels, json.dumps(body).encode(), key=rid.encode())
    producer.flush(60)
    producer.close(10)


def rows_of(i: int) -> int:
    """How many rows :func:`produce_rows` logs for id number ``i``."""
    return 2 if i % 4 == 0 else 1


def expected(kafka: KafkaConnection, predictions: str, labels: str, keep: int) -> Figures:
    """Per (version label, arm): served and labelled rows, log loss, accuracy and AUC,
    computed from the topics as read back (the ``keep`` newest versions, the rest "older")."""
    served = [decode_prediction(r.value) for r in read_topic(kafka, predictions)]
    truth = {}
    for record in read_topic(kafka, labels):
        body = json.loads(record.value or b"{}")
        truth.setdefault(body["id"], int(body["label"]))  # the first label wins
    newest = sorted({p.model_version for p in served})[-keep:]
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


def wait_for_labelled(url: str, labelled: int, timeout: float = 240.0) -> dict[str, float]:
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


def assert_matches(found: dict[str, float], want_all: Figures) -> None:
    """The join's scrape ``found`` equals ``want_all`` (served outputs are float32 on the wire:
    equal within their rounding)."""
    for (version, arm), want in want_all.items():
        labels = f'{{arm="{arm}",version="{version}"}}'
        assert found[f"streamtrain_quality_served_rows_total{labels}"] == want["served"], labels
        assert found[f"streamtrain_quality_labelled_rows_total{labels}"] == want["labelled"], labels
        coverage = found[f"streamtrain_quality_label_coverage_ratio{labels}"]
        assert math.isclose(coverage, want["labelled"] / want["served"], abs_tol=1e-9), labels
        if want["labelled"] == 0:
            continue
        assert found[f"streamtrain_quality_window_rows{labels}"] == want["labelled"], labels
        window_loss = found[f"streamtrain_quality_window_log_loss{labels}"]
        assert math.isclose(window_loss, want["log_loss"], rel_tol=1e-6), labels
        loss_sum = found[f"streamtrain_quality_log_loss_total{labels}"]
        assert math.isclose(loss_sum / want["labelled"], want["log_loss"], rel_tol=1e-6), labels
        accuracy = found[f"streamtrain_quality_window_accuracy{labels}"]
        assert math.isclose(accuracy, want["accuracy"], abs_tol=1e-12), labels
        if "auc" in want:
            auc = found[f"streamtrain_quality_window_auc{labels}"]
            assert math.isclose(auc, want["auc"], abs_tol=1e-9), labels
    # a (version, arm) the topics never served is exported at 0
    for key, value in found.items():
        if key.startswith("streamtrain_quality_served_rows_total{"):
            arm = key.split('arm="')[1].split('"')[0]
            version = key.split('version="')[1].split('"')[0]
            assert value == want_all.get((version, arm), {"served": 0.0})["served"], key
