"""LabelProducer on the real broker: labels keyed by request id, in JSON and binary, read back
by the label decoder the join uses; a bad label fails in the application, before Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from streamtrain.client import LabelProducer
from streamtrain.config import load_settings
from streamtrain.kafka import KafkaConnection, create_topics, record_consumer
from streamtrain.sample.spec import spec_for_model
from streamtrain.wire.label_record import LabelError, LabelRecord, decode_label
from tests.integration.snapshot_harness import wait

# Runs again with kafka-python in CI (make test-integration-kafka-python): its Kafka path
# differs by client library.
pytestmark = pytest.mark.kafka_client

MODEL = {"name": "linear", "task": "multiclass", "input_shape": [3], "num_classes": 3}


def _read(connection: KafkaConnection, topic: str, expected: int) -> list[Any]:
    consumer = record_consumer(connection, topic=topic)
    try:
        consumer.assign([0])
        consumer.seek_to_beginning([0])
        records: list[Any] = []

        def arrived() -> bool:
            records.extend(consumer.poll(200, 1000))
            return len(records) >= expected

        wait(arrived, f"{expected} labels")
        records.extend(consumer.poll(300, 1000))
        return records
    finally:
        consumer.close()


@pytest.mark.parametrize("format", ["json", "binary"])
def test_labels_are_keyed_by_request_id_and_decode_as_sent(
    kafka_connection: KafkaConnection, unique_name: str, format: str
) -> None:
    settings = load_settings(
        overrides={
            "kafka": {"bootstrap_servers": kafka_connection.bootstrap_servers},
            "topics": {"labels": unique_name},
            "model": MODEL,
        }
    )
    create_topics(kafka_connection, [unique_name])
    spec = spec_for_model(settings.model)
    with LabelProducer.from_settings(settings, format=format) as labels:  # type: ignore[arg-type]
        labels.send("req-1", 2)
        labels.send("req-2/0", 0, weight=0.5, timestamp=1_700_000_000.25)
        with pytest.raises(LabelError) as refused:
            labels.send("req-3", 3)  # 3 classes: 0..2
        assert refused.value.reason == "bad_label"
        with pytest.raises(LabelError) as refused:
            labels.send("x" * 257, 1)
        assert refused.value.reason == "bad_id"
        assert labels.sent == 2

    records = _read(kafka_connection, unique_name, 2)
    decoded = [
        decode_label(spec, r.value, dict(r.headers)["content-type"], r.key, 99.0) for r in records
    ]
    assert [r.key for r in records] == [b"req-1", b"req-2/0"]
    assert decoded == [
        LabelRecord("req-1", 2, 1.0, 99.0),  # no timestamp sent: the record's own
        LabelRecord("req-2/0", 0, 0.5, 1_700_000_000.25),
    ]
