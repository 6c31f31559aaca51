"""Resuming a checkpointed position where no topic id is known: the fingerprint alone decides.

The trainer tests in test_replaced_log.py run on a broker that reports topic ids, which catch
a re-created topic first; this one takes the id away so that the record fingerprint stored
with the position is what tells the new log from the old.
"""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient, NewTopic

from streamtrain.ingest import KafkaSampleSource, SourceOptions
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.record_mark import RecordMark
from streamtrain.sample.spec import SampleSpec
from tests.integration.trainer_harness import FEATURES, hyperplane_stream, produce_json
from tests.metrics_scrape import Exporter

SPEC = SampleSpec(feature_shape=(FEATURES,), task="binary")


def _read(source: KafkaSampleSource, until: int) -> tuple[int, dict[int, RecordMark]]:
    """Samples handed out until partition 0 reaches ``until``, and the last batch's marks."""
    samples, marks = 0, {}
    deadline = time.monotonic() + 60
    while source.positions()[0] < until:
        assert time.monotonic() < deadline, f"stuck at {source.positions()}"
        batch = source.next_batch()
        samples += batch.size
        marks.update(batch.marks)
    return samples, dict(marks)


def test_a_re_created_longer_topic_is_noticed_by_the_fingerprint_alone(
    kafka_connection: KafkaConnection, unique_name: str, trainer_metrics: Exporter
) -> None:
    topic = f"{unique_name}-samples"
    x, y = hyperplane_stream(500, seed=41)
    produce_json(kafka_connection.bootstrap_servers, topic, x[:300], y[:300])
    source_args = {"spec": SPEC, "topic": topic, "group_id": unique_name, "kafka": kafka_connection}
    reading = SourceOptions(start_from="earliest", max_batch_size=64)
    with KafkaSampleSource(**source_args, options=reading) as source:
        learned, marks = _read(source, 300)
    assert learned == 300 and marks[0].offset == 299

    admin = AdminClient({"bootstrap.servers": kafka_connection.bootstrap_servers})
    for done in admin.delete_topics([topic]).values():
        done.result(30)
    for done in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        done.result(30)
    new_x, new_y = hyperplane_stream(500, seed=42)
    produce_json(kafka_connection.bootstrap_servers, topic, new_x, new_y)

    def resets() -> float:
        name = "streamtrain_ingest_offset_resets_total"
        return trainer_metrics.value(name, partition="0", policy="earliest")

    before = resets()
    with KafkaSampleSource(**source_args, options=reading) as source:
        source.topic_id = None  # as on a broker without topic ids
        source.resume({0: 300}, marks)
        learned, _ = _read(source, 500)
    assert learned == 500  # the whole new log, not its records 300..499
    assert resets() - before == 1
