"""The prediction log's queue, without a broker: what is held, dropped and why, request ids,
and the records' bytes (a producer double stands in for Kafka; the broker tests are in
tests/integration/test_serve_prediction_log.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from streamtrain.jagged import SparseRows
from streamtrain.kafka.producer import Delivery, Headers
from streamtrain.metrics import SERVER_REGISTRY
from streamtrain.serve.endpoints import create_app
from streamtrain.serve.inference import DirectEngine, head_for
from streamtrain.serve.prediction_log import DROP_REASONS, PredictionLog
from streamtrain.serve.prediction_rows import ServedBatch, encode_served, request_id_for
from streamtrain.serve.protocol import ModelIO, ProtocolError
from streamtrain.serve.served_model import ServedModel
from streamtrain.serve.slot import WeightSlot
from streamtrain.spec import SampleSpec, SparseFeature
from streamtrain.train.models import build_model
from streamtrain.wire import decode_binary
from streamtrain.wire.prediction_record import PREDICTION_CONTENT_TYPE, decode_prediction

SPEC = SampleSpec((3,), "multiclass", num_classes=4)


class HeldProducer:
    """A RecordProducer whose records wait until the test acknowledges or fails them."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes, Delivery]] = []
        self.headers: list[Headers] = []
        self.closed = False
        self._pending: list[Delivery] = []
        self._lock = threading.Lock()

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> Future[int]:
        raise AssertionError("the prediction log sends with produce()")

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        on_delivery: Delivery,
    ) -> None:
        with self._lock:
            self.sent.append((key, value, on_delivery))
            self.headers.append(headers)
            self._pending.append(on_delivery)

    def _take(self) -> list[Delivery]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def acknowledge(self) -> None:
        for on_delivery in self._take():
            on_delivery(None)

    def fail(self) -> None:
        for on_delivery in self._take():
            on_delivery(RuntimeError("broker said no"))

    def flush(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))

    def poll(self, timeout: float) -> None:
        return None

    def close(self, timeout: float) -> None:
        self.closed = True


def _batch(rows: int, request_id: str = "req", served_at: float = 7.5) -> ServedBatch:
    features = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) / 7
    outputs = np.full((rows, 4), 0.25, np.float32)
    return ServedBatch(request_id, served_at, 9, "run-x", features, outputs, None)


def _count(name: str, reason: str | None = None) -> float:
    labels = {} if reason is None else {"reason": reason}
    return SERVER_REGISTRY.get_sample_value(name, labels) or 0.0


def _counts() -> dict[str, float]:
    counts = {
        r: _count("streamtrain_serve_prediction_log_dropped_records_total", r) for r in DROP_REASONS
    }
    counts["logged"] = _count("streamtrain_serve_prediction_log_records_total")
    return counts


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.fixture
def producer() -> HeldProducer:
    return HeldProducer()


@pytest.fixture
def started(producer: HeldProducer) -> Iterator[PredictionLog]:
    log = PredictionLog(
        spec=SPEC, topic="p", producer=lambda: producer, max_records=5, timeout_s=0.5
    )
    log.start()
    yield log
    log.close()


def _delta(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in _counts().items()}


def test_rows_past_the_bound_are_dropped_whole_and_counted(
    started: PredictionLog, producer: HeldProducer
) -> None:
    before = _counts()
    assert started.submit(_batch(3))
    assert started.submit(_batch(2))
    assert not started.submit(_batch(1))  # 5 held: nothing more fits, submit returns at once
    assert not started.submit(_batch(2))
    assert started.held == 5
    _wait(lambda: len(producer.sent) == 5, "five records sent")
    assert _delta(before)["queue_full"] == 3
    gauge = SERVER_REGISTRY.get_sample_value("streamtrain_serve_prediction_log_queue_records")
    assert gauge == 5
    producer.acknowledge()
    _wait(lambda: started.held == 0, "the acknowledgements")
    assert started.submit(_batch(2))  # room again
    _wait(lambda: len(producer.sent) == 7, "the next records")
    producer.acknowledge()
    _wait(lambda: started.held == 0, "the last acknowledgements")
    assert _delta(before) == {**dict.fromkeys(DROP_REASONS, 0.0), "queue_full": 3, "logged": 7}


def test_failed_deliveries_are_dropped_as_produce_errors(
    started: PredictionLog, producer: HeldProducer
) -> None:
    before = _counts()
    started.submit(_batch(3))
    _wait(lambda: len(producer.sent) == 3, "three records sent")
    producer.fail()
    _wait(lambda: started.held == 0, "the failures")
    assert _delta(before)["produce_error"] == 3 and _delta(before)["logged"] == 0


def test_close_waits_a_bounded_time_then_writes_off_what_is_held(
    started: PredictionLog, producer: HeldProducer
) -> None:
    before = _counts()
    started.submit(_batch(2))
    _wait(lambda: len(producer.sent) == 2, "two records sent")
    began = time.monotonic()
    started.close()  # the producer never acknowledges: close gives up after timeout_s
    assert time.monotonic() - began < 5
    assert producer.closed and started.held == 0
    assert not started.submit(_batch(1))
    producer.acknowledge()  # too late: already counted as unflushed, not as logged
    assert _delta(before) == {**dict.fromkeys(DROP_REASONS, 0.0), "unflushed": 3, "logged": 0}


def test_requests_wait_while_the_producer_cannot_be_built() -> None:
    attempts: list[float] = []
    producer = HeldProducer()

    def build() -> HeldProducer:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError("Kafka unreachable")
        return producer

    log = PredictionLog(
        spec=SPEC, topic="p", producer=build, max_records=5, timeout_s=0.5, connect_backoff_s=0.01
    )
    log.start()
    try:
        assert log.submit(_batch(2, "early"))  # accepted while no producer exists yet
        _wait(lambda: len(producer.sent) == 2, "the early rows sent once connected")
        assert len(attempts) == 3
        assert [key for key, _, _ in producer.sent] == [b"early/0", b"early/1"]
        assert producer.headers[0] == [("content-type", PREDICTION_CONTENT_TYPE.encode())]
    finally:
        producer.acknowledge()
        log.close()


def test_request_ids_are_checked_generated_and_sized_for_their_rows() -> None:
    assert request_id_for("order-9", 1) == "order-9"
    generated = {request_id_for(None, 1) for _ in range(1000)}
    assert len(generated) == 1000 and all(len(g) == 32 for g in generated)
    assert request_id_for("a" * 254, 3) == "a" * 254  # "<id>/2" is 256 bytes: fits
    for bad, rows in [("", 1), ("a" * 257, 1), ("a" * 255, 2), ("\udcff", 1)]:
        with pytest.raises(ProtocolError) as refused:
            request_id_for(bad, rows)
        assert refused.value.status == 400 and "\n" not in str(refused.value)


def test_each_row_record_holds_the_served_features_bit_for_bit() -> None:
    batch = _batch(3, "r")
    records = encode_served(SPEC, [batch])
    assert [key for key, _ in records] == [b"r/0", b"r/1", b"r/2"]
    for row, (key, value) in enumerate(records):
        logged = decode_prediction(value)
        assert (logged.request_id, logged.model_version, logged.run_id) == (
            key.decode(),
            9,
            "run-x",
        )
        assert logged.served_at == 7.5 and logged.outputs == (0.25,) * 4
        sample = decode_binary(SPEC, [logged.sample], np.zeros(1))
        assert sample.features[0].tobytes() == batch.features[row].tobytes()
        assert sample.labels.tolist() == [0] and sample.timestamps.tolist() == [7.5]
    assert [k for k, _ in encode_served(SPEC, [_batch(1, "one")])] == [b"one"]


def test_sparse_rows_are_logged_in_layout_v2_with_their_ids() -> None:
    spec = SampleSpec((2,), "binary", sparse=(SparseFeature("items", "items", 8),))
    sparse = SparseRows.from_lists(["items"], [{"items": ([4, 5], [0.5, 2.0])}, {}])
    features = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)
    outputs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    batch = ServedBatch("s", 1.0, 2, "run", features, outputs, sparse)
    samples = [decode_prediction(v).sample for _, v in encode_served(spec, [batch])]
    decoded = decode_binary(spec, samples, np.zeros(2))
    assert decoded.features.tobytes() == features.tobytes()
    items = decoded.sparse.features["items"]
    assert items.ids.tolist() == [4, 5] and items.lengths.tolist() == [2, 0]
    assert items.weights.tolist() == [0.5, 2.0]


def _app(prediction_log: PredictionLog | None) -> TestClient:
    model = torch.nn.Linear(3, 4)
    slot = WeightSlot(model)
    slot.load({k: torch.ones_like(v) for k, v in model.state_dict().items()}, version=3, run_id="r")
    served = ServedModel(
        slot=slot,
        engine=DirectEngine(slot, head_for(SPEC), torch.device("cpu")),
        io=ModelIO.for_spec(SPEC),
        name="m",
        prediction_log=prediction_log,
    )
    return TestClient(
        create_app(
            slot=slot,
            engine=served.engine,
            io=served.io,
            model_name="m",
            max_body_bytes=1 << 20,
            served=served,
        )
    )


def _infer(client: TestClient, data: list[float], datatype: str = "FP32", **extra: object) -> Any:
    tensor = {"name": "input", "shape": [1, 3], "datatype": datatype, "data": data}
    return client.post("/v2/models/m/infer", json={"inputs": [tensor], **extra})


def test_with_the_log_off_ids_are_echoed_unchecked_and_none_generated() -> None:
    client = _app(None)
    assert "id" not in _infer(client, [1, 2, 3]).json()
    for own in ("", "x" * 300):
        reply = _infer(client, [1, 2, 3], id=own)
        assert reply.status_code == 200 and reply.json()["id"] == own


def test_the_log_keeps_the_fp32_values_the_model_was_given(producer: HeldProducer) -> None:
    log = PredictionLog(
        spec=SPEC, topic="p", producer=lambda: producer, max_records=10, timeout_s=0.5
    )
    log.start()
    try:
        client = _app(log)
        sent = [0.1, 1e-3, 2.5]  # FP64 on the wire: the model sees them rounded to FP32
        reply = _infer(client, sent, "FP64")
        assert reply.status_code == 200
        generated = reply.json()["id"]
        assert len(generated) == 32
        assert _infer(client, [1, 2, 3], id="").status_code == 400
        _wait(lambda: len(producer.sent) == 1, "the logged row")
        key, value, _ = producer.sent[0]
        logged = decode_prediction(value)
        assert key == generated.encode() and logged.model_version == 3
        sample = decode_binary(SPEC, [logged.sample], np.zeros(1))
        assert sample.features[0].tobytes() == np.asarray(sent, np.float32).tobytes()
        assert list(logged.outputs) == reply.json()["outputs"][0]["data"]
    finally:
        producer.acknowledge()
        log.close()


def test_a_sparse_request_is_logged_row_by_row_with_its_ids(producer: HeldProducer) -> None:
    spec = SampleSpec(
        (2,),
        "binary",
        sparse=(SparseFeature("user", "users", 1), SparseFeature("items", "items", 3)),
    )
    params = {"rows": 50, "embedding_dim": 4}
    slot = WeightSlot(build_model("dlrm", spec, params))
    slot.load(dict(build_model("dlrm", spec, params).state_dict()), version=4, run_id="r")
    log = PredictionLog(
        spec=spec, topic="p", producer=lambda: producer, max_records=10, timeout_s=0.5
    )
    served = ServedModel(
        slot=slot,
        engine=DirectEngine(slot, head_for(spec), torch.device("cpu")),
        io=ModelIO.for_spec(spec),
        name="ctr",
        prediction_log=log,
    )
    client = TestClient(
        create_app(
            slot=slot,
            engine=served.engine,
            io=served.io,
            model_name="ctr",
            max_body_bytes=1 << 20,
            served=served,
        )
    )
    features = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    users, items = [[3], [9]], [[1, 2], []]

    def ids(name: str, rows: list[list[int]]) -> list[dict[str, object]]:
        flat = [i for row in rows for i in row]
        return [
            {"name": name, "shape": [len(flat)], "datatype": "INT64", "data": flat},
            {
                "name": f"{name}__lengths",
                "shape": [2],
                "datatype": "INT64",
                "data": [len(r) for r in rows],
            },
        ]

    dense = {"name": "input", "shape": [2, 2], "datatype": "FP32", "data": features.tolist()}
    log.start()
    try:
        body = {"id": "ad-7", "inputs": [dense, *ids("user", users), *ids("items", items)]}
        reply = client.post("/v2/models/ctr/infer", json=body)
        assert reply.status_code == 200 and reply.json()["id"] == "ad-7"
        _wait(lambda: len(producer.sent) == 2, "two logged rows")
        assert [key for key, _, _ in producer.sent] == [b"ad-7/0", b"ad-7/1"]
        samples = [decode_prediction(value).sample for _, value, _ in producer.sent]
        decoded = decode_binary(spec, samples, np.zeros(2))
        assert decoded.features.tobytes() == features.tobytes()
        assert decoded.sparse.features["user"].ids.tolist() == [3, 9]
        assert decoded.sparse.features["items"].lengths.tolist() == [2, 0]
        assert decoded.sparse.features["items"].ids.tolist() == [1, 2]
    finally:
        producer.acknowledge()
        log.close()
