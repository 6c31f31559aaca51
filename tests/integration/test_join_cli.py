"""`streamtrain join` refuses local mistakes in one line with its exit code, before Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamtrain.cli.common import ExitCode


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
