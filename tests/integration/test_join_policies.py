"""`streamtrain join` on the real broker: expired predictions follow the policy, unusable labels
are dead-lettered with their reason, joined samples carry the served features bit for bit, and
/metrics and /health tell what happened."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from streamtrain.kafka import KafkaConnection, record_producer
from tests.integration.join_harness import HEAD, JoinCase, by_id, join_metric, joining, metrics_url
from tests.integration.process_output import REQUEST_S
from tests.integration.trainer_harness import scrape

JOINED = [f"j-{i}" for i in range(5)]
WINDOW_S = 1.0  # of the restarted join, beyond the time the labels took to send
EXPIRING = [f"e-{i}" for i in range(5, 10)]


@pytest.mark.parametrize("policy", ["drop", "default_label"])
def test_expiry_policy_and_dead_letter_reasons(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path, policy: str
) -> None:
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=1)
    kafka, topics = case.kafka, case.topics
    served = case.predictions(JOINED + EXPIRING, time.time())
    junk = record_producer(kafka)
    junk.send(topics.predictions, b"not a prediction", key=b"junk-pred")
    junk.flush(30)
    extra = {
        "STREAMTRAIN_JOIN__WINDOW_S": "1.0",
        "STREAMTRAIN_JOIN__LABEL_WAIT_S": "0.5",
        "STREAMTRAIN_JOIN__ON_EXPIRED": policy,
        "STREAMTRAIN_JOIN__DEFAULT_LABEL": "0",
        "STREAMTRAIN_JOIN__DEFAULT_WEIGHT": "0.25",
    }
    env = case.env(extra)
    # In the log before the join starts, so it reads them before any window can end.
    case.labels(
        {**{rid: 1 for rid in JOINED}, "u-100": 1, "u-101": 0},
        raw={"bad-200": b'{"id": "bad-200", "label": 5}', "bad-201": b"\x00junk"},
    )
    with joining(env) as run:
        url = metrics_url(env)
        expired = f'streamtrain_join_expired_predictions_total{{cause="window",policy="{policy}"}}'
        join_metric(url, expired, 4.5, timeout=60)
        # Now too late for EXPIRING, and a second label for each joined id.
        case.labels({rid: 1 for rid in EXPIRING})
        case.labels({rid: 0 for rid in JOINED})
        dead = case.dead_letters(at_least=15, timeout=60)
        metrics = scrape(url)
        with urllib.request.urlopen(
            url.replace("/metrics", "/health/ready"), timeout=REQUEST_S
        ) as ok:
            assert ok.status == 200

    reasons = {
        (d.key or b"").decode(): d.headers["streamtrain-error"].split(b":")[0].decode()
        for d in dead
    }
    expected = {
        **{rid: "late" for rid in EXPIRING},
        **{rid: "duplicate" for rid in JOINED},
        "u-100": "unknown_id",
        "u-101": "unknown_id",
        "bad-200": "bad_label",
        "bad-201": "undecodable",
        "junk-pred": "undecodable",
    }
    assert reasons == expected, run.output
    assert len(dead) == len(expected)
    sources = {(d.key or b"").decode(): d.headers["streamtrain-source"].decode() for d in dead}
    assert sources["junk-pred"].startswith(f"{topics.predictions}/0/")
    assert sources["u-100"].startswith(f"{topics.labels}/0/")

    wanted = JOINED + (EXPIRING if policy == "default_label" else [])
    samples = by_id(case.samples(len(wanted), 60))
    assert sorted(samples) == sorted(wanted)
    for rid, (sample,) in samples.items():  # exactly one each
        value = sample.value or b""
        assert value[:4] == served[rid][:4] and value[HEAD:] == served[rid][HEAD:]
        label = int.from_bytes(value[16:24], "little")
        outcome = sample.headers["streamtrain-join-outcome"].decode()
        assert (label, outcome) == ((1, "joined") if rid in JOINED else (0, "default_label"))
        assert sample.headers["content-type"] == b"application/x-streamtrain-sample"

    emitted = "streamtrain_join_emitted_samples_total"
    assert metrics[f'{emitted}{{outcome="joined"}}'] == len(JOINED)
    assert metrics.get(f'{emitted}{{outcome="default_label"}}', 0.0) == len(wanted) - len(JOINED)
    assert metrics["streamtrain_join_label_delay_seconds_count"] == len(JOINED)
    dlq = "streamtrain_join_dead_lettered_records_total"
    assert metrics[f'{dlq}{{reason="late",source="labels"}}'] == len(EXPIRING)
    assert metrics[f'{dlq}{{reason="undecodable",source="predictions"}}'] == 1
    assert metrics["streamtrain_join_pending_predictions_records"] == 0
    assert metrics["streamtrain_join_assigned_partitions"] == 1


def test_after_downtime_labels_in_the_backlog_join_and_the_rest_expire(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    """Expiry is event time: a restarted join reads the labels that were produced in time
    while it was down before it expires what they complete, and expires the others by the
    policy (here the default label)."""
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=1)
    extra = {
        "STREAMTRAIN_JOIN__ON_EXPIRED": "default_label",
        "STREAMTRAIN_JOIN__DEFAULT_LABEL": "0",
    }
    # The first run only holds the predictions: a window it cannot reach.
    env = case.env({**extra, "STREAMTRAIN_JOIN__WINDOW_S": "3600"})
    with joining(env):  # its stop checkpoints the ten pending predictions
        join_metric(metrics_url(env), "streamtrain_join_assigned_partitions", 0.5, timeout=60)
        served_at = time.time()
        served = case.predictions(JOINED + EXPIRING, served_at)
        pending = "streamtrain_join_pending_predictions_records"
        join_metric(metrics_url(env), pending, len(served) - 0.5, timeout=60)
    # While the join is down, behind a backlog longer than one poll (1000 records): the
    # restarted join must read through it before it may expire anything.
    backlog = {f"u-{i}": 0 for i in range(3000)}
    case.labels({**backlog, **{rid: 1 for rid in JOINED}})
    # The window of the restarted join is derived from how long that took on this machine:
    # every label (stamped at its send) is in time by WINDOW_S, however slow the machine was.
    window_s = time.time() - served_at + WINDOW_S
    env = case.env({**extra, "STREAMTRAIN_JOIN__WINDOW_S": f"{window_s:.3f}"})
    # The downtime itself (not a synchronisation): every window ends before the join is back.
    time.sleep(max(0.0, served_at + window_s + 0.5 - time.time()))
    with joining(env):
        samples = case.samples(len(served), timeout=60)
    outcomes = {
        rid: found.headers["streamtrain-join-outcome"].decode()
        for rid, (found,) in by_id(samples).items()
    }
    assert outcomes == {
        **{rid: "joined" for rid in JOINED},
        **{rid: "default_label" for rid in EXPIRING},
    }
