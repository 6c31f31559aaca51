"""Served quality on the real broker: what a `streamtrain join` exports per model version and
arm on its /metrics equals an independent computation over the predictions and labels topics
read back by the test (scikit-learn's log loss, accuracy and AUC); and it still does when the
join is killed (-9) between a row's serving and its label, its pairing restored from the
join's checkpoint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streamtrain.kafka import KafkaConnection
from tests.integration.join_harness import (
    JoinCase,
    join_metric,
    joining,
    kill_join,
    metrics_url,
    reap,
    start_join,
    stop_join,
)
from tests.integration.quality_harness import (
    assert_matches,
    expected,
    labelled_ids,
    produce_labels,
    produce_rows,
    rows_of,
    wait_for_labelled,
)

pytestmark = pytest.mark.kafka_client

IDS = 400
KEEP = 3  # versions 1..6 are served: 1, 2 and 3 fold into "older"
SERVED_AT = 1.0e9
CHECKPOINTS = "streamtrain_join_checkpoint_seconds_count"


def test_served_quality_per_version_and_arm_matches_the_topics(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=2)
    topics = case.topics
    env = case.env(
        {
            "STREAMTRAIN_JOIN__QUALITY_VERSIONS": str(KEEP),
            "STREAMTRAIN_JOIN__QUALITY_WINDOW_S": "3600",
        },
    )
    with joining(env):
        url = metrics_url(env)
        produce_rows(kafka_connection, topics.predictions, IDS, SERVED_AT)
        produce_labels(kafka_connection, topics.labels, labelled_ids(IDS))
        want = expected(kafka_connection, topics.predictions, topics.labels, KEEP)
        labelled = sum(rows_of(i) for i in labelled_ids(IDS))
        assert sum(f["labelled"] for f in want.values()) == labelled
        found = wait_for_labelled(url, labelled)
    assert_matches(found, want)
    # bounded cardinality: the kept versions and "older", nothing else
    versions = {
        key.split('version="')[1].split('"')[0]
        for key in found
        if key.startswith("streamtrain_quality_served_rows_total{")
    }
    assert versions == {"4", "5", "6", "older"}


def test_a_kill_between_serving_and_labelling_loses_and_repeats_no_row(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    """Every row is logged and half the labels come while the first join runs; it is killed
    (-9) as the other half is produced, so rows served before the kill are labelled after it.
    The second join's figures equal the topics': the pairing and its tallies came back from
    the checkpoint, and what was applied after that checkpoint was applied once."""
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=2)
    topics = case.topics
    extra = {
        "STREAMTRAIN_JOIN__QUALITY_VERSIONS": str(KEEP),
        "STREAMTRAIN_JOIN__QUALITY_WINDOW_S": "3600",
        "STREAMTRAIN_JOIN__CHECKPOINT_EVERY_S": "0.2",
    }
    first_env, second_env = case.env(extra), case.env(extra)
    ids = labelled_ids(IDS)
    early, late = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    first = start_join(first_env)
    second: subprocess.Popen[str] | None = None
    outputs: list[str] = []
    try:
        produce_rows(kafka_connection, topics.predictions, IDS, SERVED_AT)
        produce_labels(kafka_connection, topics.labels, early)
        url = metrics_url(first_env)
        seen = wait_for_labelled(url, sum(rows_of(i) for i in early))
        join_metric(url, CHECKPOINTS, seen[CHECKPOINTS] + 1, timeout=60)  # one taken since
        produce_labels(kafka_connection, topics.labels, late)
        outputs.append(kill_join(first))  # mid-run: some late labels applied, some not
        second = start_join(second_env)
        found = wait_for_labelled(metrics_url(second_env), sum(rows_of(i) for i in ids))
        code, output = stop_join(second)
        outputs.append(output)
        assert code == 0, output
    finally:
        reap((first, second), outputs)
    assert_matches(found, expected(kafka_connection, topics.predictions, topics.labels, KEEP))
