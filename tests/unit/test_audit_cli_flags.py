"""Flags and settings the audit found taken badly now get one line and exit 2 (usage).

Before: ``broker --port 70000`` (or ``-1``) said "embedded broker exited with code 2 on start
(is port 70000 already in use?)"; ``broker --host 999.1.1.1`` ended in a ``socket.gaierror``
traceback; ``broker --topic ''`` created a topic with no name; ``topics.samples`` empty made
the trainer exit 3 with "cannot reach Kafka ... Bad message format", and a name with a space
or over 249 characters left it waiting for records forever; ``serve --host`` with a name
that does not resolve, or an address that is not this machine's, was "cannot bind the gRPC
port ...; choose a free serve.grpc_port" (exit 1) or a bare ``[Errno -2]``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CASES = {
    "broker port over 65535": (["broker", "--port", "70000"], {}, "--port"),
    "broker port negative": (["broker", "--port", "-1"], {}, "--port"),
    "broker host unresolvable": (["broker", "--host", "999.1.1.1", "--port", "0"], {}, "--host"),
    "broker topic empty": (["broker", "--topic", "", "--port", "0"], {}, "--topic ''"),
    "broker topic with a space": (["broker", "--topic", "a b", "--port", "0"], {}, "--topic"),
    "samples topic empty": (["config", "check"], {"TOPICS__SAMPLES": ""}, "topics.samples"),
    "snapshots topic with a space": (
        ["config", "check"],
        {"TOPICS__SNAPSHOTS": "my snapshots"},
        "topics.snapshots",
    ),
    "labels topic over 249 characters": (
        ["config", "check"],
        {"TOPICS__LABELS": "l" * 250},
        "topics.labels",
    ),
    "dead-letter topic '..'": (["config", "check"], {"TOPICS__DEAD_LETTER": ".."}, "Kafka"),
    "serve host unresolvable": (["serve", "--host", "999.1.1.1", "--port", "0"], {}, "serve.host"),
    "serve host not this machine's, with gRPC": (
        ["serve", "--host", "192.0.2.1", "--port", "0"],
        {"SERVE__GRPC_PORT": "0"},
        "serve.host '192.0.2.1' is not an address of this machine",
    ),
    "serve snapshots-topic flag": (
        ["serve", "--snapshots-topic", "a/b", "--port", "0"],
        {},
        "--snapshots-topic",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_flag_or_topic_is_one_line_and_exit_2(case: str) -> None:
    args, settings, named = CASES[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTRAIN_")}
    env.update({f"STREAMTRAIN_{key}": value for key, value in settings.items()})
    done = subprocess.run(
        [sys.executable, "-m", "streamtrain.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a hang's bound: the CLI imports torch, niced, on a loaded machine
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and named in errors[0], output
