"""Audit 45, step 3: settings and flags that escaped as tracebacks (or ran on) now get one line
to stderr and exit 2.

Before: ``broker --host`` or ``serve --host`` with bytes that are not UTF-8 (a shell passes
them as they are) ended in a ``UnicodeError`` traceback from the IDNA codec, as did a
``metrics_host`` with a label over 63 characters when the trainer bound /metrics; a YAML file
nested ten thousand deep was a ``RecursionError`` traceback (exit 1); a few lines of YAML
aliases repeating aliases (a "billion laughs") under ``model.params`` made ``config check``
expand 10^8 values and never answer; ``--config /dev/zero`` read until memory ran out;
``admin --token`` with a character beyond ASCII, or ``--url`` not UTF-8, was a
``UnicodeEncodeError`` traceback, ``--url abc`` exit 1 ("cannot reach"); and an empty
``serve.admin_token`` was taken: the admin API then let in anyone who sent
``Authorization: Bearer`` with nothing after it (pin, rollback, split); a float setting of
``1e400`` or ``inf`` (``train.stop_when_idle``, ``optimizer.lr``) was taken as infinity;
``demo --dataset abc`` exited 1 after starting its broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _laughs(path: Path) -> Path:
    lines = ["model:", "  params:", '    a: &a ["lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefghij", "bcdefghijk", strict=True):
        lines.append(f"    {name}: &{name} [" + ", ".join([f"*{prev}"] * 6) + "]")
    path.write_text("\n".join(lines) + "\n")
    return path


def _deep(path: Path) -> Path:
    path.write_text("model:\n  params:\n    x: " + "[" * 20_000 + "]" * 20_000 + "\n")
    return path


CASES: dict[str, tuple[list[str | bytes], dict[str, str], str]] = {
    "broker host not UTF-8": (["broker", "--host", b"\xff\xfe", "--port", "0"], {}, "--host"),
    "serve host not UTF-8": (["serve", "--host", b"\xff\xfe", "--port", "0"], {}, "serve.host"),
    "metrics host label over 63": (
        ["config", "check"],
        {"STREAMTRAIN_TRAIN__METRICS_HOST": "h" * 70},
        "train.metrics_host",
    ),
    "config nested 20000 deep": (["config", "check", "--config", "DEEP"], {}, "nests too deeply"),
    "config of aliases repeating aliases": (
        ["config", "check", "--config", "LAUGHS"],
        {},
        "expands to more than",
    ),
    "config /dev/zero": (["config", "check", "--config", "/dev/zero"], {}, "over 4 MiB"),
    "admin token not ASCII": (
        ["admin", "status", "--url", "http://127.0.0.1:1"],
        {"STREAMTRAIN_ADMIN_TOKEN": "tök"},
        "printable ASCII",
    ),
    "admin url not UTF-8": (["admin", "status", "--url", b"\xff", "--token", "t"], {}, "--url"),
    "admin url with no scheme": (["admin", "status", "--url", "abc", "--token", "t"], {}, "--url"),
    "a float setting of 1e400": (
        ["config", "check"],
        {"STREAMTRAIN_TRAIN__STOP_WHEN_IDLE": "1e400"},
        "train.stop_when_idle: got '1e400', expected a finite number",
    ),
    "demo dataset unknown": (["demo", "--dataset", "abc", "--run-dir", "RUN"], {}, "--dataset"),
    "server admin token empty": (
        ["config", "check"],
        {"STREAMTRAIN_SERVE__ADMIN_TOKEN": ""},
        "serve.admin_token must be printable ASCII",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_settings_are_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    args, settings, named = CASES[case]
    files = {
        "DEEP": str(_deep(tmp_path / "deep.yaml")),
        "LAUGHS": str(_laughs(tmp_path / "laughs.yaml")),
        "RUN": str(tmp_path / "run"),
    }
    argv = [files.get(a, a) if isinstance(a, str) else a for a in args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTRAIN_")}
    env.update(settings)
    done = subprocess.run(
        [sys.executable, "-m", "streamtrain.cli", *argv],
        env=env,
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    stderr = done.stderr.decode(errors="replace")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert done.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
