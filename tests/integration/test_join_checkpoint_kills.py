"""Guarantee 7 across a ``kill -9`` that lands *inside* a join checkpoint on purpose: the join
replica owning both partitions is handing them over to a second replica (the revocation
checkpoint) and is killed while one partition's state file is written but not renamed
(``written``), or renamed while the other partition's is not written yet (``replaced``; the
two files then hold checkpoints of different moments). The pause that makes the kill land
there is the test-only hook of ``streamtrain/join/pause_hook.py``. Every label is joined
exactly once in the end."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from streamtrain.join.pause_hook import MARKER_ENV, PAUSE_ENV
from streamtrain.join.state_file import state_path
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

COUNT = 600
ASSIGNED = "streamtrain_join_assigned_partitions"


def _kill(process: subprocess.Popen[str]) -> str:
    process.kill()
    return process.communicate(timeout=30)[0]


@pytest.mark.kafka_client
@pytest.mark.parametrize("phase", ["written", "replaced"])
def test_a_kill_inside_the_handover_checkpoint_joins_every_label_once(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path, phase: str
) -> None:
    kafka = kafka_connection
    topics = new_topics(kafka, unique_name, partitions=2)
    ids = [f"r-{i}" for i in range(COUNT)]
    served = produce_predictions(kafka, topics.predictions, ids, time.time())
    labels = {rid: i % 2 for i, rid in enumerate(ids)}
    state = tmp_path / "state"
    marker = tmp_path / "paused"
    extra = {"STREAMTRAIN_JOIN__CHECKPOINT_EVERY_S": "300", "STREAMTRAIN_JOIN__WINDOW_S": "600"}
    # Only the first replica pauses, and only in a checkpoint of a partition that has joined
    # something (not the empty one written when it took the partitions).
    first_env = join_env(
        kafka, topics, state, {**extra, PAUSE_ENV: f"{phase}:1", MARKER_ENV: str(marker)}
    )
    second_env = join_env(kafka, topics, state, extra)
    first = start_join(first_env)
    second: subprocess.Popen[str] | None = None
    outputs: list[str] = []
    try:
        join_metric(metrics_url(first_env), ASSIGNED, 1.5, timeout=60)  # owns both pairs
        produce_labels(kafka, topics.labels, {rid: labels[rid] for rid in ids[: COUNT // 2]})
        emitted_before = len(wait_for_records(kafka, topics.samples, COUNT // 4, timeout=60))
        second = start_join(second_env)  # its joining makes the first hand partitions over
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert first.poll() is None, "the first replica exited instead of pausing"
            assert time.monotonic() < deadline, "the hand-over checkpoint never paused"
            time.sleep(0.05)  # poll interval of a condition wait
        partition = int(marker.read_text().split()[0])
        tmp = state_path(state, topics.predictions, partition).with_suffix(".safetensors.tmp")
        assert tmp.exists() == (phase == "written")  # the kill lands where it says
        outputs.append(_kill(first))
        join_metric(metrics_url(second_env), ASSIGNED, 1.5, timeout=60)  # takes both over
        produce_labels(kafka, topics.labels, {rid: labels[rid] for rid in ids[COUNT // 2 :]})
        deadline = time.monotonic() + 120
        while len(by_id(read_topic(kafka, topics.samples))) < COUNT:
            assert time.monotonic() < deadline, "not every id was joined"
            time.sleep(0.2)  # poll interval of a condition wait
        code, output = stop_join(second)
        outputs.append(output)
        assert code == 0, output
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                outputs.append(_kill(process))
        print("\n=====\n".join(outputs))  # shown by pytest when the test fails

    assert "handed back" not in outputs[0], "the kill came after the hand-over, not inside it"
    assert emitted_before < COUNT
    # What the killed replica emitted after the checkpoints the second one loaded was found.
    assert "emitted after its checkpoint" in outputs[-1], outputs[-1]
    samples = by_id(read_topic(kafka, topics.samples))
    assert sorted(samples) == sorted(ids)
    repeated = {rid: len(found) for rid, found in samples.items() if len(found) != 1}
    assert not repeated, f"ids emitted more than once: {list(repeated.items())[:5]}"
    for rid, (sample,) in samples.items():
        value = sample.value or b""
        assert value[HEAD:] == served[rid][HEAD:], rid
        assert int.from_bytes(value[16:24], "little") == labels[rid], rid
