"""Two `streamtrain join` replicas split two partitions; kill -9 of each in turn, mid-stream,
loses and duplicates no joined sample."""

from __future__ import annotations

import time
from pathlib import Path

from streamtrain.kafka import KafkaConnection
from tests.integration.join_harness import (
    HEAD,
    JoinCase,
    join_metric,
    joined_once,
    kill_join,
    metrics_url,
    reap,
    start_join,
    stop_join,
    wait_all_joined,
)
from tests.threads import Workers

COUNT = 3000
ASSIGNED = "streamtrain_join_assigned_partitions"


def test_labels_are_joined_exactly_once_across_kill_9_of_replicas(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=2)
    ids = [f"r-{i}" for i in range(COUNT)]
    served = case.predictions(ids, time.time())
    labels = {rid: i % 2 for i, rid in enumerate(ids)}
    # Checkpoints only at assignment and hand-over: a kill always leaves samples emitted after
    # the last checkpoint, which the next owner must find on the samples topic and not repeat.
    extra = {"STREAMTRAIN_JOIN__CHECKPOINT_EVERY_S": "300", "STREAMTRAIN_JOIN__WINDOW_S": "600"}
    first_env = case.env(extra)
    second_env = case.env(extra)  # same group and folder, own port
    first, second = start_join(first_env), start_join(second_env)
    outputs: list[str] = []
    try:
        for env in (first_env, second_env):  # the range assignor splits the pairs
            join_metric(metrics_url(env), ASSIGNED, 0.5, timeout=60)
        feeder = Workers()  # a failed send fails the test at join
        feeder.start(
            lambda: case.labels(labels, paced=lambda i: time.sleep(0.25) if i % 100 == 99 else None)
        )
        at_kill = len(case.samples(600, timeout=60))
        outputs.append(kill_join(first))
        killed_at = time.monotonic()
        join_metric(metrics_url(second_env), ASSIGNED, 1.5, timeout=60)
        takeover_s = time.monotonic() - killed_at
        case.samples(at_kill + 600, timeout=60)
        outputs.append(kill_join(second))
        third = start_join(case.env(extra))
        feeder.join(120)
        wait_all_joined(case.kafka, case.topics.samples, COUNT, timeout=120)
        code, output = stop_join(third)
        outputs.append(output)
        assert code == 0, output
    finally:
        reap((first, second), outputs)

    log = "\n".join(outputs)
    assert at_kill < COUNT, "the first kill came after the whole stream: nothing to recover"
    assert "emitted after its checkpoint" in log, log
    tags = set()
    for rid, sample in joined_once(case.kafka, case.topics.samples, ids).items():
        value = sample.value or b""
        assert value[:4] == served[rid][:4] and value[HEAD:] == served[rid][HEAD:], rid
        assert int.from_bytes(value[16:24], "little") == labels[rid]
        tags.add(sample.headers["streamtrain-join"].decode())
    assert tags == {f"{case.topics.predictions}/0", f"{case.topics.predictions}/1"}
    print(f"takeover after kill -9: {takeover_s:.1f} s (session timeout 2 s)")
