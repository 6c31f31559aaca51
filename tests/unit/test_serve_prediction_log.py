"""The prediction log's queue, without a broker: what is held, dropped and why, request ids,
and the records' bytes (a producer double stands in for Kafka; the broker tests are in
tests/integration/test_serve_prediction_log.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from streamtrain.metrics import SERVER_REGISTRY
from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.serve.prediction_log.rows import ServedBatch, encode_served
from streamtrain.serve.prediction_log.writer import DROP_REASONS, PredictionLog
from streamtrain.serve.protocol.bodies import ProtocolError
from streamtrain.serve.protocol.request_ids import request_id_for
from streamtrain.wire import decode_binary
from streamtrain.wire.prediction_record import PREDICTION_CONTENT_TYPE, decode_prediction
from tests.unit.held_producer import HeldProducer, wait_for

SPEC = SampleSpec((3,), "multiclass", num_classes=4)


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
    wait_for(lambda: len(producer.sent) == 5, "five records sent")
    assert _delta(before)["queue_full"] == 3
    gauge = SERVER_REGISTRY.get_sample_value("streamtrain_serve_prediction_log_queue_records")
    assert gauge == 5
    producer.acknowledge()
    wait_for(lambda: started.held == 0, "the acknowledgements")
    assert started.submit(_batch(2))  # room again
    wait_for(lambda: len(producer.sent) == 7, "the next records")
    producer.acknowledge()
    wait_for(lambda: started.held == 0, "the last acknowledgements")
    assert _delta(before) == {**dict.fromkeys(DROP_REASONS, 0.0), "queue_full": 3, "logged": 7}


def test_failed_deliveries_are_dropped_as_produce_errors(
    started: PredictionLog, producer: HeldProducer
) -> None:
    before = _counts()
    started.submit(_batch(3))
    wait_for(lambda: len(producer.sent) == 3, "three records sent")
    producer.fail()
    wait_for(lambda: started.held == 0, "the failures")
    assert _delta(before)["produce_error"] == 3 and _delta(before)["logged"] == 0


def test_close_waits_a_bounded_time_then_writes_off_what_is_held(
    started: PredictionLog, producer: HeldProducer
) -> None:
    before = _counts()
    started.submit(_batch(2))
    wait_for(lambda: len(producer.sent) == 2, "two records sent")
    began = time.monotonic()
    started.close()  # the producer never acknowledges: close gives up after timeout_s
    # a bound on a hang (unbounded, close would wait for ever), with a loaded machine's margin
    assert time.monotonic() - began < 30
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
        wait_for(lambda: len(producer.sent) == 2, "the early rows sent once connected")
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
