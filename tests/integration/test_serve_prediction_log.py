"""The prediction log on the real broker: every served row logged once, with its id, version
and the features bit for bit; ids echoed or generated; a broker gone costs no request."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from streamtrain.broker import EmbeddedBroker
from streamtrain.builders.server import build_worker
from streamtrain.config import Settings, load_settings
from streamtrain.kafka import create_topics
from streamtrain.sample.spec import spec_for_model
from streamtrain.serve.server import ServingWorker
from streamtrain.wire import decode_binary
from streamtrain.wire.prediction_record import PREDICTION_CONTENT_TYPE, decode_prediction
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import MODEL, prediction_log, publish, wait
from tests.threads import Workers

# Runs again with kafka-python in CI (make test-integration-kafka-python): its Kafka path
# differs by client library.
pytestmark = pytest.mark.kafka_client

THREADS, REQUESTS = 8, 24


def _settings(bootstrap: str, name: str, **serve: Any) -> Settings:
    return load_settings(
        overrides={
            "kafka": {"bootstrap_servers": bootstrap, "connect_timeout_s": 5},
            "topics": {"snapshots": f"{name}.snapshots", "predictions": f"{name}.predictions"},
            "model": MODEL,
            "serve": {"port": 0, "model_name": "m", "prediction_log": True, **serve},
        }
    )


@pytest.fixture
def settings(kafka_bootstrap: str, unique_name: str) -> Settings:
    created = _settings(kafka_bootstrap, unique_name)
    create_topics(kafka_bootstrap, [created.topics.snapshots])
    create_topics(kafka_bootstrap, [created.topics.predictions], partitions=3)
    return created


@pytest.fixture
def worker(settings: Settings) -> Iterator[ServingWorker]:
    serving = build_worker(settings)
    serving.start()
    publish(settings, 5)
    try:
        wait(
            lambda: (
                httpx.get(f"{serving.url}/v2/health/ready", timeout=REQUEST_S).status_code == 200
            ),
            "ready",
        )
        yield serving
    finally:
        serving.stop()


def _infer(url: str, rows: np.ndarray, request_id: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    return httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=30)


LOGGED = "streamtrain_serve_prediction_log_records_total"
DROPPED = "streamtrain_serve_prediction_log_dropped_records_total"
HELD = "streamtrain_serve_prediction_log_queue_records"
Scrape = dict[tuple[str, str], float]


def _metrics(url: str) -> Scrape:
    """The prediction log's samples from the real /metrics: (name, reason) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=REQUEST_S).text
    values: Scrape = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("streamtrain_serve_prediction_log"):
            for sample in family.samples:
                values[sample.name, sample.labels.get("reason", "")] = sample.value
    return values


def _since(url: str, before: Scrape) -> Scrape:
    """Counters as increments since ``before`` (other tests of this process count too)."""
    now = _metrics(url)
    return {
        key: value - before.get(key, 0.0) if key[0] != HELD else value for key, value in now.items()
    }


def _dropped(scrape: Scrape) -> dict[str, float]:
    return {reason: value for (name, reason), value in scrape.items() if name == DROPPED}


def test_every_served_row_is_logged_once_with_the_features_it_was_served(
    worker: ServingWorker, settings: Settings
) -> None:
    before = _metrics(worker.url)
    sent: dict[str, tuple[np.ndarray, list[float]]] = {}  # row id -> features, output
    generated: list[str] = []
    lock = threading.Lock()

    def client(thread: int) -> None:
        rng = np.random.default_rng(thread)
        for i in range(REQUESTS):
            rows = rng.normal(size=(1 + i % 3, 4)).astype(np.float32)
            own = f"t{thread}-{i}" if i % 2 == 0 else None
            reply = _infer(worker.url, rows, own)
            assert reply.status_code == 200, f"{reply.status_code} {reply.text}"
            doc = reply.json()
            request_id = doc["id"]
            values = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(len(rows), -1)
            with lock:
                if own is None:
                    generated.append(request_id)
                else:
                    assert request_id == own
                ids = (
                    [request_id]
                    if len(rows) == 1
                    else [f"{request_id}/{r}" for r in range(len(rows))]
                )
                for row_id, row, value in zip(ids, rows, values, strict=True):
                    sent[row_id] = (row, value.tolist())

    # A failed request or assert in a client thread fails the test here.
    clients = Workers()
    for thread in range(THREADS):
        clients.start(client, thread)
    clients.join(120)
    assert len(generated) == len(set(generated)) == THREADS * REQUESTS // 2
    assert all(len(g) == 32 and int(g, 16) >= 0 for g in generated)

    records = prediction_log(settings, len(sent))
    keys = [r.key.decode() for r in records]
    assert len(keys) == len(set(keys)), "a served row was logged twice"
    assert set(keys) == set(sent)
    spec = spec_for_model(settings.model)
    for record in records:
        assert dict(record.headers)["content-type"] == PREDICTION_CONTENT_TYPE.encode()
        logged = decode_prediction(record.value)
        features, output = sent[logged.request_id]
        assert logged.request_id == record.key.decode()
        assert (logged.model_version, logged.run_id) == (5, "run-a")
        assert list(logged.outputs) == output
        sample = decode_binary(spec, [logged.sample], np.zeros(1))
        assert sample.features[0].tobytes() == features.tobytes()  # bit for bit
        assert (sample.labels[0], sample.weights[0]) == (0.0, 1.0)
        assert sample.timestamps[0] == logged.served_at

    wait(lambda: _metrics(worker.url)[HELD, ""] == 0, "an empty queue")
    metrics = _since(worker.url, before)
    assert metrics[LOGGED, ""] == len(sent)
    produce = "streamtrain_serve_prediction_log_produce_seconds"
    size = "streamtrain_serve_prediction_log_record_size_bytes"
    assert metrics[f"{produce}_count", ""] == metrics[f"{size}_count", ""] == len(sent)
    assert 0 < metrics[f"{produce}_sum", ""] / len(sent) < 5.0
    assert metrics[f"{size}_sum", ""] == sum(len(r.value) for r in records)
    assert _dropped(metrics) == {
        "queue_full": 0,
        "produce_error": 0,
        "unflushed": 0,
        "encode_error": 0,
    }


def test_bad_ids_are_refused_in_one_line_and_not_logged(
    worker: ServingWorker, settings: Settings
) -> None:
    row = np.ones((1, 4), np.float32)
    for bad, rows in [
        ("", row),
        ("x" * 257, row),
        ("é" * 128 + "x", row),
        ("y" * 255, np.ones((2, 4), np.float32)),
    ]:
        reply = _infer(worker.url, rows, bad)
        assert reply.status_code == 400, bad
        message = reply.json()["error"]
        assert "request id" in message and "\n" not in message
    good = "after-the-bad-ones"
    assert _infer(worker.url, row, good).json()["id"] == good
    batch = _infer(worker.url, np.ones((3, 4), np.float32), "b" * 254)  # '<id>/2' is 256 bytes
    assert batch.status_code == 200
    records = prediction_log(settings, 4)
    assert sorted(r.key.decode() for r in records) == sorted(
        [good] + [f"{'b' * 254}/{r}" for r in range(3)]
    )


def test_a_broker_gone_costs_no_request_and_the_drops_are_counted(unique_name: str) -> None:
    # A broker of its own: the session's must not die.
    with EmbeddedBroker() as broker:
        settings = _settings(
            broker.bootstrap_servers,
            unique_name,
            prediction_log_queue=5,
            prediction_log_timeout_s=5.0,  # the 40 requests below fit well within it
        )
        broker.create_topics([settings.topics.snapshots, settings.topics.predictions])
        worker = build_worker(settings)
        worker.start()
        try:
            publish(settings, 5)
            wait(
                lambda: (
                    httpx.get(f"{worker.url}/v2/health/ready", timeout=REQUEST_S).status_code == 200
                ),
                "ready",
            )
            before = _metrics(worker.url)
            assert _infer(worker.url, np.ones((1, 4), np.float32), "before").status_code == 200
            wait(lambda: _since(worker.url, before)[LOGGED, ""] == 1, "the first record logged")
            broker.stop()

            served = 40
            for i in range(served):
                reply = _infer(worker.url, np.full((1, 4), i, np.float32), f"during-{i}")
                assert reply.status_code == 200 and reply.json()["id"] == f"during-{i}"

            def accounted() -> bool:
                metrics = _since(worker.url, before)
                held, logged = metrics[HELD, ""], metrics[LOGGED, ""] - 1
                return sum(_dropped(metrics).values()) + held + logged == served

            wait(accounted, "every served row logged, held or counted as dropped")
            # At most 5 records held: the rest of what came in while they waited was dropped.
            assert 0 < _dropped(_since(worker.url, before))["queue_full"] <= served - 5
            # What was sent into the outage fails after prediction_log_timeout_s.
            wait(
                lambda: _dropped(_since(worker.url, before))["produce_error"] >= 1,
                "produce errors counted",
            )
            assert _since(worker.url, before)[LOGGED, ""] == 1
        finally:
            worker.stop()


def test_generated_ids_are_returned_over_grpc_and_logged(
    kafka_bootstrap: str, unique_name: str
) -> None:
    settings = _settings(kafka_bootstrap, unique_name, grpc_port=0)
    create_topics(kafka_bootstrap, [settings.topics.snapshots, settings.topics.predictions])
    worker = build_worker(settings)
    worker.start()
    try:
        publish(settings, 5)
        assert worker.grpc is not None
        client = grpcclient.InferenceServerClient(worker.grpc.target)
        wait(lambda: client.is_model_ready("m"), "ready over gRPC")
        ids = []
        for own in ("grpc-own", ""):
            tensor = grpcclient.InferInput("input", [2, 4], "FP32")
            tensor.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4))
            ids.append(client.infer("m", [tensor], request_id=own).get_response().id)
        assert ids[0] == "grpc-own" and len(ids[1]) == 32
        records = prediction_log(settings, 4)
        assert sorted(r.key.decode() for r in records) == sorted(
            f"{i}/{row}" for i in ids for row in (0, 1)
        )
    finally:
        worker.stop()
    assert uuid.UUID(hex=ids[1]).version == 4
