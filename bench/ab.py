"""A/B of model versions by served quality: promotion decisions, served-quality figures against
an offline computation, and the request-path cost of a split.

Run: ``.venv/bin/python bench/ab.py [--share 0.5] [--min-rows 200] [--rate 200] [--seed 0]``

One embedded broker; per case a fresh server (``build_worker``, as ``streamtrain serve``
builds it) with the prediction log and ``serve.promotion`` on, and the real join
(``python -m streamtrain.cli join``, a subprocess) for served quality. The stream is a
drifted one: 16 standard-normal features, binary label ``x . w_B > 0`` (concept B). Three
versions of the ``linear`` model, each fitted offline (logistic regression, Adam):

* version 1, the live one, fitted to concept A (before the drift), pinned;
* version 2, the candidate (each case on topics of its own): in the good case fitted to
  concept B, in the bad case fitted to concept B with the label mapping broken (0 <-> 1).

Each case sets a split ``{"candidate": "newest", share}`` through
the admin API and runs the delayed-labels loop of the demo's application
(:mod:`streamtrain.demo.label_app`): one-row requests with ids at ``--rate``, each row's label
sent to the labels topic ``U(0.5, 3.0)`` s later (the demo's delays), until the server
decides. It reports the decision (expected: promote, rollback), the seconds from the split to
the decision and the labelled rows per arm the decision rested on; then it sends the labels
still due, waits for the join to score them, reads the predictions and labels topics back and
recomputes log loss, accuracy and AUC per (version, arm) with scikit-learn: the largest
difference to the join's /metrics is printed.

Split cost (good case, before its split): ``--cost-requests`` sequential one-row requests
without a split, with a 50/50 split whose candidate is the live version (the routing alone)
and with the 50/50 split to the candidate, alternated twice, best of each: req/s ratios.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.builders.server import build_worker
from streamtrain.config import Settings, load_settings
from streamtrain.demo.delayed import LABEL_DELAY_MAX_SECONDS, LABEL_DELAY_MIN_SECONDS
from streamtrain.kafka import KafkaConnection, create_topics, record_consumer, record_producer
from streamtrain.kafka.watermark import true_ends
from streamtrain.sample.spec import spec_for_model
from streamtrain.serve.protocol.split import TrafficSplit, make_plan
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.models import build_model
from streamtrain.wire.label_record import encode_label_json
from streamtrain.wire.prediction_record import decode_prediction

FEATURES = 16
TOKEN = "bench-ab-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = {
    "name": "linear",
    "task": "binary",
    "input_shape": [FEATURES],
    "params": {"standardize": False},
}


@dataclass(frozen=True)
class Concepts:
    a: np.ndarray[Any, Any]
    b: np.ndarray[Any, Any]


def fit(
    settings: Settings, w: np.ndarray[Any, Any], flip: bool, seed: int
) -> dict[str, torch.Tensor]:
    """Weights of the linear model fitted to ``y = x . w > 0`` (labels flipped if ``flip``)."""
    torch.manual_seed(seed)
    model = build_model("linear", spec_for_model(settings.model), settings.model.params)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4000, FEATURES)).astype(np.float32)
    y = (x @ w > 0).astype(np.float32)
    if flip:
        y = 1.0 - y
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(features).reshape(-1), labels
        )
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def settings_for(bootstrap: str, name: str, args: argparse.Namespace) -> Settings:
    return load_settings(
        overrides={
            "kafka": {"bootstrap_servers": bootstrap},
            "topics": {
                "snapshots": f"{name}.snapshots",
                "predictions": f"{name}.predictions",
                "labels": f"{name}.labels",
                "samples": f"{name}.samples",
                "labels_dead_letter": f"{name}.dlq",
            },
            "model": MODEL,
            "serve": {
                "port": 0,
                "model_name": "m",
                "admin_token": TOKEN,
                "retain_versions": 2,
                "prediction_log": True,
                "promotion": True,
                "promotion_min_rows": args.min_rows,
                "promotion_check_s": 0.5,
            },
        }
    )


def publish(settings: Settings, version: int, tensors: dict[str, torch.Tensor]) -> None:
    writer = SnapshotWriter(
        kafka=KafkaConnection.from_settings(settings.kafka),
        topic=settings.topics.snapshots,
        model_name="linear",
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
        chunk_bytes=512 * 1024,
    )
    try:
        now = time.time()
        writer.write(SnapshotRequest(version, "bench-ab", tensors, now, {}, now))
    finally:
        writer.close(10.0)


def wait(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


class Evidence(logging.Handler):
    """Keeps the promotion watch's decision line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def infer(client: httpx.Client, url: str, rid: str, row: np.ndarray[Any, Any]) -> str:
    body = {
        "id": rid,
        "inputs": [
            {"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": row.tolist()}
        ],
    }
    response = client.post(f"{url}/v2/models/m/infer", json=body)
    return str(response.json()["model_version"]) if response.status_code == 200 else ""


def split_state(client: httpx.Client, url: str) -> Any:
    return client.get(f"{url}/v2/admin/split", headers=AUTH).json()["split"]


def run_case(
    broker: EmbeddedBroker, args: argparse.Namespace, concepts: Concepts, name: str, bad: bool
) -> dict[str, Any]:
    settings = settings_for(broker.bootstrap_servers, name, args)
    topics = settings.topics
    create_topics(
        broker.bootstrap_servers, [topics.snapshots, topics.samples, topics.labels_dead_letter]
    )
    create_topics(broker.bootstrap_servers, [topics.predictions, topics.labels], 2)
    live = fit(settings, concepts.a, False, args.seed)
    candidate = fit(settings, concepts.b, bad, args.seed + 1)
    join, join_url = start_join(settings, Path(tempfile.mkdtemp(prefix="ab-join-")))
    worker = build_worker(settings)
    url = worker.start()
    evidence = Evidence()
    logging.getLogger("streamtrain.serve.promotion").addHandler(evidence)
    rng = np.random.default_rng(args.seed + (7 if bad else 3))
    producer = record_producer(KafkaConnection.from_settings(settings.kafka), linger_ms=5)
    try:
        with httpx.Client(timeout=10) as client:
            publish(settings, 1, live)
            wait(lambda: infer(client, url, "warm-1", np.zeros(FEATURES)) == "1", "version 1 live")
            client.post(f"{url}/v2/admin/pin", json={"version": "1"}, headers=AUTH)
            publish(settings, 2, candidate)
            wait(
                lambda: (
                    "2" in client.get(f"{url}/v2/admin/versions", headers=AUTH).json()["retained"]
                ),
                "candidate retained",
            )
            cost = split_cost(client, url, args) if not bad else None
            plan = {"candidate": "newest", "share": args.share, "mode": "split"}
            client.post(f"{url}/v2/admin/split", json=plan, headers=AUTH).raise_for_status()
            started = time.monotonic()
            due: list[tuple[float, str, int]] = []
            sent = labelled = 0
            while split_state(client, url) is not None:
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"{name}: no decision within {args.timeout} s")
                tick = time.monotonic()
                for _ in range(max(1, int(args.rate / 10))):
                    row = rng.normal(size=FEATURES).astype(np.float32)
                    rid = f"{name}-{sent}"
                    sent += 1
                    infer(client, url, rid, row)
                    label = int(row @ concepts.b > 0)
                    delay = random.uniform(LABEL_DELAY_MIN_SECONDS, LABEL_DELAY_MAX_SECONDS)
                    heapq.heappush(due, (time.monotonic() + delay, rid, label))
                labelled += send_due(producer, topics.labels, due, time.monotonic())
                time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
            decided_s = time.monotonic() - started
            state = client.get(f"{url}/v2/admin/versions", headers=AUTH).json()
        labelled += send_due(producer, topics.labels, due, float("inf"))
        producer.flush(30)
        figures = compare_quality(settings, join_url, labelled_total(settings))
    finally:
        producer.close(10)
        logging.getLogger("streamtrain.serve.promotion").removeHandler(evidence)
        worker.stop()
        join.terminate()
        join.wait(30)
    line = next((m for m in evidence.lines if m.startswith("promotion:")), "")
    rows = [int(n) for n in re.findall(r"(\d+) rows", line)]
    return {
        "case": "bad candidate (broken label mapping)"
        if bad
        else "good candidate (fitted after the drift)",
        "decision": line.split()[1] if line else None,
        "expected": "rollback" if bad else "promote",
        "live_after": state["live"],
        "seconds_to_decide": round(decided_s, 1),
        "labelled_rows_live_candidate": rows,
        "requests_sent": sent,
        "evidence": line,
        "split_cost": cost,
        **figures,
    }


def send_due(producer: Any, topic: str, due: list[tuple[float, str, int]], now: float) -> int:
    sent = 0
    while due and due[0][0] <= now:
        _, rid, label = heapq.heappop(due)
        producer.send(topic, encode_label_json(rid, label), key=rid.encode())
        sent += 1
    return sent


def start_join(settings: Settings, state: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    topics = settings.topics
    env = {
        **os.environ,
        "STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "STREAMTRAIN_TOPICS__PREDICTIONS": topics.predictions,
        "STREAMTRAIN_TOPICS__LABELS": topics.labels,
        "STREAMTRAIN_TOPICS__SAMPLES": topics.samples,
        "STREAMTRAIN_TOPICS__LABELS_DEAD_LETTER": topics.labels_dead_letter,
        "STREAMTRAIN_MODEL__TASK": "binary",
        "STREAMTRAIN_MODEL__INPUT_SHAPE": f"[{FEATURES}]",
        "STREAMTRAIN_JOIN__STATE_DIR": str(state),
        "STREAMTRAIN_JOIN__GROUP_ID": f"{topics.predictions}-join",
        "STREAMTRAIN_JOIN__SESSION_TIMEOUT_MS": "2000",
        "STREAMTRAIN_JOIN__METRICS_PORT": str(port),
        "STREAMTRAIN_JOIN__QUALITY_WINDOW_S": "100000",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "streamtrain.cli", "join", "--no-create-missing-topics"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}/metrics"


def read_back(settings: Settings, topic: str) -> list[Any]:
    consumer = record_consumer(KafkaConnection.from_settings(settings.kafka), topic=topic)
    try:
        partitions = consumer.partitions_of_topic()
        consumer.assign(partitions)
        ends = true_ends(consumer, partitions, time.monotonic() + 60)
        if ends is None:
            raise SystemExit(f"no fetch response from {topic}")
        consumer.seek_to_beginning(partitions)
        out: list[Any] = []
        while any(consumer.position(p) < ends[p] for p in partitions):
            out += [r for r in consumer.poll(200, 10_000) if r.offset < ends[r.partition]]
        return out
    finally:
        consumer.close()


def labelled_total(settings: Settings) -> int:
    """Rows that have a label on the topics (every row of a labelled id)."""
    served = [decode_prediction(r.value) for r in read_back(settings, settings.topics.predictions)]
    labelled = {json.loads(r.value)["id"] for r in read_back(settings, settings.topics.labels)}
    return sum(1 for p in served if p.request_id in labelled)


def compare_quality(settings: Settings, join_url: str, labelled: int) -> dict[str, Any]:
    """The join's served quality against scikit-learn over the topics read back."""
    deadline = time.monotonic() + 120
    while True:
        found = _scrape(join_url)
        total = sum(
            v for k, v in found.items() if k.startswith("streamtrain_quality_labelled_rows_total{")
        )
        if total >= labelled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    served = [decode_prediction(r.value) for r in read_back(settings, settings.topics.predictions)]
    truth: dict[str, int] = {}
    for record in read_back(settings, settings.topics.labels):
        body = json.loads(record.value)
        truth.setdefault(body["id"], int(body["label"]))
    groups: dict[tuple[str, str], list[tuple[tuple[float, ...], int]]] = {}
    for p in served:
        if p.request_id in truth:
            groups.setdefault((str(p.model_version), p.arm), []).append(
                (p.outputs, truth[p.request_id])
            )
    worst = 0.0
    table = {}
    for (version, arm), rows in sorted(groups.items()):
        outputs = np.array([o for o, _ in rows], np.float64).reshape(-1, 2)
        ys = np.array([y for _, y in rows])
        offline = {
            # the served probability of the true class, floored at 1e-7 (docs/labels.md):
            # scikit-learn's log_loss takes 1 - P(1) for class 0 and floors at machine epsilon
            "log_loss": float(
                np.mean(-np.log(np.clip(outputs[np.arange(len(ys)), ys], 1e-7, 1.0)))
            ),
            "accuracy": accuracy_score(ys, outputs.argmax(axis=1)),
            "auc": roc_auc_score(ys, outputs[:, 1]) if 0 < ys.sum() < len(ys) else float("nan"),
        }
        labels = f'{{arm="{arm}",version="{version}"}}'
        online = {
            k: found.get(f"streamtrain_quality_window_{k}{labels}", float("nan")) for k in offline
        }
        for k in offline:
            if not np.isnan(offline[k]):
                worst = max(worst, abs(offline[k] - online[k]))
        table[f"{version}/{arm}"] = {
            "rows": len(rows),
            "join_rows": found.get(f"streamtrain_quality_labelled_rows_total{labels}"),
            **{f"{k}_offline": round(v, 6) for k, v in offline.items()},
            **{f"{k}_join": round(v, 6) for k, v in online.items()},
        }
    return {
        "labelled_rows_scored": total,
        # counted from this read of the topics, not the earlier one the wait used: the
        # prediction log may still have been flushing its last rows then
        "labelled_rows_on_topics": sum(len(rows) for rows in groups.values()),
        "max_abs_difference": worst,
        "per_version_arm": table,
    }


def _scrape(url: str) -> dict[str, float]:
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return {}
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def split_cost(client: httpx.Client, url: str, args: argparse.Namespace) -> dict[str, float]:
    """Sequential one-row requests without a split, with a 50/50 split whose candidate is the
    live version (routing only: every request hashed, all served live) and with the 50/50
    split to the candidate; alternated, best of two."""
    row = np.ones(FEATURES, np.float32)
    plans = {
        "none": None,
        "routing": {"candidate": "1", "share": 0.5, "mode": "split"},
        "split": {"candidate": "newest", "share": 0.5, "mode": "split"},
    }
    rates = dict.fromkeys(plans, 0.0)
    for _ in range(2):
        for mode, plan in plans.items():
            if plan is None:
                client.delete(f"{url}/v2/admin/split", headers=AUTH)
            else:
                client.post(f"{url}/v2/admin/split", json=plan, headers=AUTH).raise_for_status()
            start = time.perf_counter()
            for i in range(args.cost_requests):
                infer(client, url, f"cost-{mode}-{i}", row)
            rates[mode] = max(rates[mode], args.cost_requests / (time.perf_counter() - start))
    client.delete(f"{url}/v2/admin/split", headers=AUTH)
    return {
        **route_cost(),
        **{f"req_s_{mode}": round(rate) for mode, rate in rates.items()},
        "ratio_routing": round(rates["routing"] / rates["none"], 3),
        "ratio_split": round(rates["split"] / rates["none"], 3),
    }


def route_cost(calls: int = 200_000) -> dict[str, float]:
    """CPU cost of the routing step alone, in this process: ``TrafficSplit.route`` per call
    with no plan and with a 50/50 plan (hash of a 12-character id, one counter), best of 3."""
    plain = TrafficSplit(None)
    split = TrafficSplit(make_plan("1", 0.5, "split"))
    ids = [f"request-{i:04d}" for i in range(1000)]

    def per_call(route: Any) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for i in range(calls):
                route(ids[i % 1000], 7)
            best = min(best, (time.perf_counter() - start) / calls)
        return best * 1e6

    return {
        "route_us_none": round(per_call(plain.route), 3),
        "route_us_split": round(per_call(split.route), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--min-rows", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--cost-requests", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    a = rng.normal(size=FEATURES)
    b = a + 1.5 * rng.normal(size=FEATURES)  # the drift: concept B leans away from A
    concepts = Concepts(a / np.linalg.norm(a), b / np.linalg.norm(b))
    with EmbeddedBroker() as broker:
        results = [
            run_case(broker, args, concepts, "good", bad=False),
            run_case(broker, args, concepts, "bad", bad=True),
        ]
    print(json.dumps(results, indent=2))
    if any(r["decision"] != r["expected"] for r in results):
        raise SystemExit("a decision was wrong")


if __name__ == "__main__":
    main()
