"""Audit 45, step 2 on a real `streamtrain join`: labels written by any client that are nested
thousands deep, carry a megabyte string or a timestamp in epoch milliseconds are
dead-lettered with their reason (short, one line), counted, and the join goes on pairing the
good labels behind them.

Before: the nested label raised RecursionError out of the label decoder, past the join's
handling of bad labels; the millisecond timestamp was joined and became the sample's time."""

from __future__ import annotations

import time
from pathlib import Path

from streamtrain.kafka import KafkaConnection
from tests.integration.join_harness import JoinCase, by_id, join_metric, joining, metrics_url

GOOD = [f"g-{i}" for i in range(4)]
NOW = time.time()
HOSTILE = {
    "n-10": (b'{"id": "n-10", "label": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "undecodable"),
    "w-11": (b'{"id": "w-11", "label": 1, "weight": "' + b"w" * 500_000 + b'"}', "bad_weight"),
    "t-12": (
        f'{{"id": "t-12", "label": 1, "timestamp": {NOW * 1000:.0f}}}'.encode(),
        "bad_timestamp",
    ),
}


def test_hostile_labels_are_dead_lettered_and_the_join_goes_on(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=1)
    case.predictions(GOOD + list(HOSTILE), time.time())
    # The hostile labels first: the good ones behind them must still be joined.
    case.labels({}, raw={rid: value for rid, (value, _) in HOSTILE.items()})
    case.labels({rid: 1 for rid in GOOD})
    env = case.env({"STREAMTRAIN_JOIN__WINDOW_S": "120"})
    with joining(env) as run:
        dead = case.dead_letters(at_least=len(HOSTILE), timeout=120)
        samples = by_id(case.samples(len(GOOD), 120))
        dlq = "streamtrain_join_dead_lettered_records_total"
        metrics = join_metric(
            metrics_url(env), f'{dlq}{{reason="undecodable",source="labels"}}', 0.5, timeout=60
        )
    errors = {(d.key or b"").decode(): d.headers["streamtrain-error"].decode() for d in dead}
    assert {rid: e.split(":")[0] for rid, e in errors.items()} == {
        rid: reason for rid, (_, reason) in HOSTILE.items()
    }, run.output[-3000:]
    assert all(len(e) < 600 and "\n" not in e for e in errors.values()), errors
    assert sorted(samples) == sorted(GOOD)
    assert metrics[f'{dlq}{{reason="bad_timestamp",source="labels"}}'] == 1
    assert "Traceback" not in run.output
