"""Sparse samples through KafkaSampleSource on the real broker: each valid sample's IDs reach
its batch with it, and each malformed sparse field is dead-lettered with its own reason."""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamtrain.ingest import ERROR_HEADER, KafkaSampleSource, SourceOptions
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.sample.batch import Batch
from streamtrain.sample.spec import SampleSpec, SparseFeature
from tests.metrics_scrape import Exporter

# Runs again with kafka-python in CI (make test-integration-kafka-python): its Kafka path
# differs by client library.
pytestmark = pytest.mark.kafka_client

SPEC = SampleSpec(
    (2,),
    "binary",
    sparse=(SparseFeature("user", "users", 1), SparseFeature("items", "items", 4)),
)
BINARY = [("content-type", b"application/x-streamtrain-sample")]
FIXED = np.dtype([("m", "S4"), ("t", "<f8"), ("w", "<f4"), ("l", "<i8"), ("f", "<f4", (2,))])


def _items(i: int) -> list[int]:
    return [i * 100 + k for k in range(i % 5)]  # 0 to 4 IDs


def _json(i: int) -> bytes:
    doc = {"features": [i, 0.5], "sparse": {"user": [i], "items": _items(i)}, "label": i % 2}
    return json.dumps(doc).encode()


def _binary(i: int) -> bytes:
    # Layout v2 written by hand from docs/wire-format.md, not with streamtrain's encoder.
    row = np.zeros(1, FIXED)
    row["m"], row["t"], row["w"], row["l"] = b"STS2", np.nan, 1.0, i % 2
    row["f"][0] = [i, 0.5]
    items = _items(i)
    out = row.tobytes() + struct.pack("<H", 2)
    out += struct.pack("<HIB", 0, 1, 0) + struct.pack("<q", i)
    out += struct.pack("<HIB", 1, len(items), 1) + np.asarray(items, "<i8").tobytes()
    return out + np.full(len(items), 0.5, "<f4").tobytes()


MALFORMED: dict[str, tuple[bytes, str]] = {
    "wrong_type": (b'{"features":[1,2],"label":1,"sparse":{"items":[1.5]}}', "bad_sparse"),
    "too_long": (
        b'{"features":[1,2],"label":1,"sparse":{"items":[1,2,3,4,5]}}',
        "sparse_too_long",
    ),
    "unknown": (b'{"features":[1,2],"label":1,"sparse":{"page":[1]}}', "unknown_sparse_feature"),
    "bad_weight": (
        b'{"features":[1,2],"label":1,"sparse":{"items":[1]},"sparse_weights":{"items":[-2]}}',
        "bad_sparse_weight",
    ),
    "binary_unknown": (
        _binary(3)[: FIXED.itemsize]
        + struct.pack("<H", 1)
        + struct.pack("<HIB", 7, 1, 0)
        + struct.pack("<q", 1),
        "unknown_sparse_feature",
    ),
}


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=2)
    yield p
    p.close()


def _drain(source: KafkaSampleSource, want_records: int, timeout: float = 30.0) -> list[Batch]:
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    while sum(b.records for b in batches) < want_records:
        assert time.monotonic() < deadline, f"only {sum(b.records for b in batches)} records"
        batch = source.next_batch()
        if batch.records:
            batches.append(batch)
    return batches


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_sparse_samples_arrive_with_their_ids_and_bad_ones_are_dead_lettered(
    kafka_bootstrap: str,
    unique_name: str,
    producer: KafkaProducer,
    client: str,
    trainer_metrics: Exporter,
) -> None:
    topic, dlq = unique_name, unique_name + ".dlq"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    create_topics(kafka_bootstrap, [dlq])
    ids = list(range(1, 41))
    for i in ids:
        value, headers = (_json(i), []) if i % 2 else (_binary(i), BINARY)
        producer.send(topic, value, partition=i % 2, headers=headers)
    for n, (name, (value, _)) in enumerate(MALFORMED.items()):
        headers = BINARY if name.startswith("binary") else []
        producer.send(topic, value, key=name.encode(), partition=n % 2, headers=headers)
    producer.flush()
    reasons = [reason for _, reason in MALFORMED.values()]

    def rejected() -> dict[str, float]:
        name = "streamtrain_ingest_rejected_records_total"
        return {r: trainer_metrics.value(name, reason=r) for r in reasons}

    before = rejected()

    connection = KafkaConnection(kafka_bootstrap, client=client, options={"client_id": "t"})  # type: ignore[arg-type]
    with KafkaSampleSource(
        spec=SPEC,
        topic=topic,
        group_id=unique_name,
        kafka=connection,
        options=SourceOptions(max_batch_size=6, dead_letter_topic=dlq),
    ) as source:
        batches = _drain(source, len(ids) + len(MALFORMED))

    seen = []
    for batch in batches:
        if not batch.size:
            continue
        assert batch.sparse is not None
        user, items = batch.sparse.features["user"], batch.sparse.features["items"]
        assert len(user) == len(items) == batch.size
        for row, sample in enumerate(batch.features[:, 0].astype(int).tolist()):
            assert user[np.array([row])].ids.tolist() == [sample]
            got = items[np.array([row])]
            assert got.ids.tolist() == _items(sample)
            assert got.weights.tolist() == [1.0 if sample % 2 else 0.5] * len(_items(sample))
            seen.append(sample)
    assert sorted(seen) == ids  # each valid sample exactly once, its IDs beside it

    # One count per malformed record under its reason (two name an unknown feature).
    after = rejected()
    assert {r: after[r] - before[r] for r in reasons} == dict(Counter(reasons))
    dead = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    dead.assign([TopicPartition(dlq, 0)])
    dead.seek_to_beginning()
    records: list[Any] = []
    deadline = time.monotonic() + 20
    while len(records) < len(MALFORMED) and time.monotonic() < deadline:
        for polled in dead.poll(timeout_ms=200).values():
            records.extend(polled)
    dead.close()
    assert sorted(r.key.decode() for r in records) == sorted(MALFORMED)
    for record in records:
        value, reason = MALFORMED[record.key.decode()]
        assert record.value == value
        assert dict(record.headers)[ERROR_HEADER].decode().startswith(reason + ": ")
