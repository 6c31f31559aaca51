"""Two `streamtrain join` replicas split two partitions; kill -9 of each in turn, mid-stream,
loses and duplicates no joined sample."""

from __future__ import annotations

import time
from pathlib import Path

from streamtrain.kafka import KafkaConnection
from tests.integration.join_harness import (
    HEAD,
    by_id,
    join_env,
    join_metric,
    metrics_url,
    new_topics,
    produce_labels,
    produce_predictions,
    read_topic,
    start_join,
    stop_join,
    wait_for_records,
)
from tests.threads import Workers

COUNT = 3000
ASSIGNED = "streamtrain_join_assigned_partitions"


def _kill(process: object) -> str:
    import subprocess

    assert isinstance(process, subprocess.Popen)
    process.kill()
    output, _ = process.communicate(timeout=30)
    return str(output)


def test_labels_are_joined_exactly_once_across_kill_9_of_replicas(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    kafka = kafka_connection
    topics = new_topics(kafka, unique_name, partitions=2)
    ids = [f"r-{i}" for i in range(COUNT)]
    served = produce_predictions(kafka, topics.predictions, ids, time.time())
    labels = {rid: i % 2 for i, rid in enumerate(ids)}
    # Checkpoints only at assignment and hand-over: a kill always leaves samples emitted after
    # the last checkpoint, which the next owner must find on the samples topic and not repeat.
    extra = {"STREAMTRAIN_JOIN__CHECKPOINT_EVERY_S": "300", "STREAMTRAIN_JOIN__WINDOW_S": "600"}
    state = tmp_path / "state"
    first_env = join_env(kafka, topics, state, extra)
    second_env = join_env(kafka, topics, state, extra)  # same group and folder, own port
    first, second = start_join(first_env), start_join(second_env)
    outputs: list[str] = []
    try:
        for env in (first_env, second_env):  # the range assignor splits the pairs
            join_metric(metrics_url(env), ASSIGNED, 0.5, timeout=60)
        feeder = Workers()  # a failed send fails the test at join
        feeder.start(
            lambda: produce_labels(
                kafka,
                topics.labels,
                labels,
                paced=lambda i: time.sleep(0.25) if i % 100 == 99 else None,
            )
        )
        at_kill = len(wait_for_records(kafka, topics.samples, 600, timeout=60))
        outputs.append(_kill(first))
        killed_at = time.monotonic()
        join_metric(metrics_url(second_env), ASSIGNED, 1.5, timeout=60)
        takeover_s = time.monotonic() - killed_at
        wait_for_records(kafka, topics.samples, at_kill + 600, timeout=60)
        outputs.append(_kill(second))
        third = start_join(join_env(kafka, topics, state, extra))
        feeder.join(120)
        deadline = time.monotonic() + 120
        while len(by_id(read_topic(kafka, topics.samples))) < COUNT:
            assert time.monotonic() < deadline, "not every id was joined"
            time.sleep(0.2)  # poll interval of a condition wait
        code, output = stop_join(third)
        outputs.append(output)
        assert code == 0, output
    finally:
        for process in (first, second):
            if process.returncode is None:
                process.kill()
                outputs.append(process.communicate(timeout=30)[0])
        print("\n=====\n".join(outputs))  # shown by pytest when the test fails

    log = "\n".join(outputs)
    assert at_kill < COUNT, "the first kill came after the whole stream: nothing to recover"
    assert "emitted after its checkpoint" in log, log
    samples = by_id(read_topic(kafka, topics.samples))
    assert sorted(samples) == sorted(ids)
    repeated = {rid: len(found) for rid, found in samples.items() if len(found) != 1}
    assert not repeated, f"ids emitted more than once: {list(repeated.items())[:5]}"
    tags = set()
    for rid, (sample,) in samples.items():
        value = sample.value or b""
        assert value[:4] == served[rid][:4] and value[HEAD:] == served[rid][HEAD:], rid
        assert int.from_bytes(value[16:24], "little") == labels[rid]
        tags.add(sample.headers["streamtrain-join"].decode())
    assert tags == {f"{topics.predictions}/0", f"{topics.predictions}/1"}
    print(f"takeover after kill -9: {takeover_s:.1f} s (session timeout 2 s)")
