"""The join's predictions topic replaced (deleted, re-created longer) while the samples topic
is intact: the fingerprint in the state file tells, and the new log is joined from its start.

Without the check the restarted join would resume the new predictions log at the old offset,
skip its first records and dead-letter their labels as ``unknown_id``.
"""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from streamtrain.kafka import KafkaConnection
from tests.integration.join_harness import JoinCase, by_id, join_metric, joining, metrics_url

RESETS = 'streamtrain_join_input_resets_total{topic="%s"}'


def _re_create(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for done in admin.delete_topics([topic]).values():
        done.result(30)
    for done in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        done.result(30)


def test_a_re_created_predictions_topic_is_joined_from_its_start(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=1)
    topics = case.topics
    first = [f"a-{i}" for i in range(20)]
    second = [f"b-{i}" for i in range(30)]  # more than the old position (20)
    env = case.env({"STREAMTRAIN_JOIN__WINDOW_S": "3600"})
    case.predictions(first, time.time())
    case.labels({rid: 1 for rid in first})
    with joining(env):  # its stop checkpoints: predictions offset 20 + fingerprint
        case.samples(len(first), 90)

    _re_create(case.kafka.bootstrap_servers, topics.predictions)
    case.predictions(second, time.time())
    case.labels({rid: 1 for rid in second})
    with joining(env) as run:
        metrics = join_metric(metrics_url(env), RESETS % topics.predictions, 0.5, 90)
        samples = case.samples(len(first) + len(second), 90)
    assert metrics[RESETS % topics.predictions] == 1.0
    assert metrics.get(RESETS % topics.labels, 0.0) == 0.0  # the intact input carried on
    joined = by_id(samples)
    assert set(joined) == set(first) | set(second), sorted(set(first) | set(second) - set(joined))
    assert all(len(records) == 1 for records in joined.values()), "a sample emitted twice"
    assert "is not the log the join read" in run.output, run.output
