"""ingest.codec and ingest.decode_workers against the real broker: a declared codec reads
records without headers and dead-letters those of another format with the reason; decode
workers cut exactly the batches one decoder cuts."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamtrain.ingest import ERROR_HEADER, KafkaSampleSource, SourceOptions
from streamtrain.ingest import decode_pool as decode_pool_module
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.sample.batch import Batch
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import encode_binary, encode_json

pytestmark = pytest.mark.kafka_client

SPEC = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    yield p
    p.close()


def _source(bootstrap: str, topic: str, client: str, **options: Any) -> KafkaSampleSource:
    return KafkaSampleSource(
        spec=SPEC,
        topic=topic,
        group_id=topic,
        kafka=KafkaConnection(bootstrap, client=client),  # type: ignore[arg-type]
        options=SourceOptions(start_from="earliest", **options),
    )


def _drain(source: KafkaSampleSource, records: int, timeout_s: float = 30.0) -> list[Batch]:
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout_s
    while sum(b.records for b in batches) < records:
        assert time.monotonic() < deadline, f"only {sum(b.records for b in batches)} records"
        batch = source.next_batch()
        if batch.records:
            batches.append(batch)
    return batches


def _dead_letters(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    found: list[Any] = []
    deadline = time.monotonic() + 15
    while len(found) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            found += records
    consumer.close()
    return found


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
@pytest.mark.parametrize("codec", ["binary", "json"])
def test_a_declared_codec_reads_headerless_records_and_dead_letters_other_formats(
    kafka_bootstrap: str, unique_name: str, producer: KafkaProducer, client: str, codec: str
) -> None:
    topic, dlq = unique_name, unique_name + ".dlq"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    create_topics(kafka_bootstrap, [dlq])
    other = "json" if codec == "binary" else "binary"

    def value(i: int, fmt: str) -> bytes:
        features = [float(i), 0.0, 0.0, 0.0]
        if fmt == "binary":
            return encode_binary(SPEC, features, i % 3)
        return encode_json(features, i % 3)

    for i in range(20):
        producer.send(topic, value(i, codec))  # no content-type header at all
    # A record of the other format, even with its right header: the declared codec wins.
    header = b"application/json" if other == "json" else b"application/x-streamtrain-sample"
    producer.send(topic, value(100, other), key=b"other", headers=[("content-type", header)])
    producer.send(topic, value(20, codec))
    producer.flush()

    with _source(
        kafka_bootstrap, topic, client, codec=codec, dead_letter_topic=dlq, max_batch_size=50
    ) as source:
        batches = _drain(source, 22)
        got = np.concatenate([b.features[:, 0] for b in batches if b.size]).astype(int)
        assert got.tolist() == list(range(21))
        source.commit(source.positions())

    (dead,) = _dead_letters(kafka_bootstrap, dlq, 1)
    assert dead.key == b"other"
    error = dict(dead.headers)[ERROR_HEADER].decode()
    # JSON read as binary is the wrong size (bad_shape); binary read as JSON is undecodable.
    assert error.startswith("bad_shape: " if codec == "binary" else "undecodable: ")
    assert f"ingest.codec={codec} reads every record of this topic as {codec}" in error
    assert "set ingest.codec=auto" in error


def _json_log(producer: KafkaProducer, topic: str, n: int) -> None:
    """``n`` JSON records over 3 partitions, every 50th one refused."""
    for i in range(n):
        if i % 50 == 7:
            value = b'{"features":[1,2],"label":0}'  # wrong length: bad_shape
        else:
            value = encode_json([float(i), 1.0, 2.0, 3.0], i % 3, timestamp=1000.0 + i)
        producer.send(topic, value, partition=i % 3)
    producer.flush()


def test_decode_workers_cut_the_batches_one_decoder_cuts(
    kafka_bootstrap: str,
    unique_name: str,
    producer: KafkaProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=3)
    n = 3000
    _json_log(producer, unique_name, n)
    # Slices of a few records, so even the small polls of this test go to the workers.
    monkeypatch.setattr(decode_pool_module, "MIN_SLICE", 16)

    def batches(workers: int) -> list[Batch]:
        with _source(
            kafka_bootstrap, unique_name, "confluent", decode_workers=workers, max_batch_size=256
        ) as source:
            if workers > 1:
                assert source._pool is not None and len(source._pool.pids) == workers - 1
            return _drain(source, n)

    one, three = batches(1), batches(3)
    assert [b.size for b in one] == [b.size for b in three]
    assert sum(b.size for b in one) == n - n // 50
    for a, b in zip(one, three, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.timestamps, b.timestamps)
        assert a.next_offsets == b.next_offsets


def test_a_killed_decode_worker_stops_ingest_with_one_clear_error(
    kafka_bootstrap: str,
    unique_name: str,
    producer: KafkaProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create_topics(kafka_bootstrap, [unique_name], partitions=3)
    _json_log(producer, unique_name, 600)
    monkeypatch.setattr(decode_pool_module, "MIN_SLICE", 16)
    with _source(
        kafka_bootstrap, unique_name, "confluent", decode_workers=2, max_batch_size=64
    ) as source:
        assert source._pool is not None
        (pid,) = source._pool.pids
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(decode_pool_module.DecodeWorkerLost, match=rf"pid {pid} .*signal 9"):
            _drain(source, 600)
