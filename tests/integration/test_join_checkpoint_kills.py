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

COUNT = 600
ASSIGNED = "streamtrain_join_assigned_partitions"


@pytest.mark.kafka_client
@pytest.mark.parametrize("phase", ["written", "replaced"])
def test_a_kill_inside_the_handover_checkpoint_joins_every_label_once(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path, phase: str
) -> None:
    case = JoinCase.create(kafka_connection, unique_name, tmp_path, partitions=2)
    ids = [f"r-{i}" for i in range(COUNT)]
    served = case.predictions(ids, time.time())
    labels = {rid: i % 2 for i, rid in enumerate(ids)}
    marker = tmp_path / "paused"
    extra = {"STREAMTRAIN_JOIN__CHECKPOINT_EVERY_S": "300", "STREAMTRAIN_JOIN__WINDOW_S": "600"}
    # Only the first replica pauses, and only in a checkpoint of a partition that has joined
    # something (not the empty one written when it took the partitions).
    first_env = case.env({**extra, PAUSE_ENV: f"{phase}:1", MARKER_ENV: str(marker)})
    second_env = case.env(extra)
    first = start_join(first_env)
    second: subprocess.Popen[str] | None = None
    outputs: list[str] = []
    try:
        join_metric(metrics_url(first_env), ASSIGNED, 1.5, timeout=60)  # owns both pairs
        case.labels({rid: labels[rid] for rid in ids[: COUNT // 2]})
        emitted_before = len(case.samples(COUNT // 4, timeout=60))
        second = start_join(second_env)  # its joining makes the first hand partitions over
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert first.poll() is None, "the first replica exited instead of pausing"
            assert time.monotonic() < deadline, "the hand-over checkpoint never paused"
            time.sleep(0.05)  # poll interval of a condition wait
        partition = int(marker.read_text().split()[0])
        state = state_path(case.state_dir, case.topics.predictions, partition)
        tmp = state.with_suffix(".safetensors.tmp")
        assert tmp.exists() == (phase == "written")  # the kill lands where it says
        outputs.append(kill_join(first))
        join_metric(metrics_url(second_env), ASSIGNED, 1.5, timeout=60)  # takes both over
        case.labels({rid: labels[rid] for rid in ids[COUNT // 2 :]})
        wait_all_joined(case.kafka, case.topics.samples, COUNT, timeout=120)
        code, output = stop_join(second)
        outputs.append(output)
        assert code == 0, output
    finally:
        reap((first, second), outputs)

    assert "handed back" not in outputs[0], "the kill came after the hand-over, not inside it"
    assert emitted_before < COUNT
    # What the killed replica emitted after the checkpoints the second one loaded was found.
    assert "emitted after its checkpoint" in outputs[-1], outputs[-1]
    for rid, sample in joined_once(case.kafka, case.topics.samples, ids).items():
        value = sample.value or b""
        assert value[HEAD:] == served[rid][HEAD:], rid
        assert int.from_bytes(value[16:24], "little") == labels[rid], rid
