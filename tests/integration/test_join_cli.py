"""`streamtrain join` refuses mistakes in one line with its exit code: local ones before Kafka
is tried, an unreachable broker, topics that are not co-partitioned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamtrain.cli.common import ExitCode
from streamtrain.kafka import KafkaConnection, create_topics


def _join(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamtrain.cli", "join"],
        env={
            **os.environ,
            # Nothing listens here: each mistake must be found before Kafka is tried.
            "STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "STREAMTRAIN_JOIN__STATE_DIR": str(tmp_path / "state"),
            "STREAMTRAIN_JOIN__METRICS_PORT": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "code", "words"),
    [
        (
            {"STREAMTRAIN_JOIN__ON_EXPIRED": "default_label"},
            ExitCode.USAGE,
            "needs join.default_label",
        ),
        (
            {
                "STREAMTRAIN_JOIN__ON_EXPIRED": "default_label",
                "STREAMTRAIN_JOIN__DEFAULT_LABEL": "5",
                "STREAMTRAIN_MODEL__TASK": "binary",
            },
            ExitCode.USAGE,
            "join.default_label 5 does not fit the model",
        ),
        ({"STREAMTRAIN_JOIN__WINDOW_S": "0"}, ExitCode.USAGE, "join.window_s"),
    ],
)
def test_bad_join_settings_are_one_line(
    tmp_path: Path, env: dict[str, str], code: int, words: str
) -> None:
    done = _join(tmp_path, **env)
    assert done.returncode == code, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    taken = tmp_path / "file"
    taken.write_text("")
    done = _join(tmp_path, STREAMTRAIN_JOIN__STATE_DIR=str(taken))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "--state-dir" in done.stderr and "is a file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unreachable_broker_is_exit_code_3(tmp_path: Path) -> None:
    done = _join(tmp_path, STREAMTRAIN_KAFKA__CONNECT_TIMEOUT_S="2")
    assert done.returncode == ExitCode.KAFKA_UNREACHABLE, done.stderr
    assert "127.0.0.1:9" in done.stderr and "Traceback" not in done.stderr


def test_topics_that_are_not_co_partitioned_are_refused(
    kafka_connection: KafkaConnection, unique_name: str, tmp_path: Path
) -> None:
    create_topics(kafka_connection, [f"{unique_name}-preds"], 2)
    create_topics(kafka_connection, [f"{unique_name}-labels"], 1)
    done = _join(
        tmp_path,
        STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS=kafka_connection.bootstrap_servers,
        STREAMTRAIN_TOPICS__PREDICTIONS=f"{unique_name}-preds",
        STREAMTRAIN_TOPICS__LABELS=f"{unique_name}-labels",
        STREAMTRAIN_TOPICS__SAMPLES=f"{unique_name}-samples",
        STREAMTRAIN_TOPICS__LABELS_DEAD_LETTER=f"{unique_name}-dlq",
        STREAMTRAIN_JOIN__GROUP_ID=unique_name,
        STREAMTRAIN_JOIN__SESSION_TIMEOUT_MS="2000",
    )
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "same partition count" in done.stderr
    assert "Traceback" not in done.stderr
