"""`streamtrain serve` as a real process: prints its URL, turns ready, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx

from streamtrain.config import load_settings
from streamtrain.kafka import create_topics
from streamtrain.sample.spec import spec_for_model
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.models import build_model
from tests.integration.process_output import AWAIT_S, REQUEST_S
from tests.integration.snapshot_harness import settings_writer
from tests.version_fixtures import version_weights


def test_serve_command_serves_the_newest_snapshot(kafka_bootstrap: str, unique_name: str) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    env = {
        **os.environ,
        "STREAMTRAIN_MODEL__NAME": "linear",
        "STREAMTRAIN_MODEL__TASK": "regression",
        "STREAMTRAIN_MODEL__INPUT_SHAPE": "[4]",
    }
    settings = load_settings(
        overrides={
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "model": {"name": "linear", "task": "regression", "input_shape": [4]},
        }
    )
    writer = settings_writer(settings, unique_name)
    spec = spec_for_model(settings.model)
    tensors = version_weights(build_model("linear", spec), 9)
    writer.write(SnapshotRequest(9, "run", tensors, None, {}, time.time()))
    writer.close(5)
    process = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "streamtrain"),
            "serve",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--snapshots-topic",
            unique_name,
            "--port",
            "0",
            "--model-name",
            "lin",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"on (http://\S+)", first)
        assert match, f"no URL in the first line: {first!r}"
        url = match.group(1)
        deadline = time.monotonic() + AWAIT_S  # a hang's bound
        while time.monotonic() < deadline:
            if httpx.get(f"{url}/v2/health/ready", timeout=REQUEST_S).status_code == 200:
                break
            time.sleep(0.05)
        assert httpx.get(f"{url}/v2/models/lin", timeout=REQUEST_S).json()["versions"] == ["9"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)  # a hang's bound: a niced exit on a loaded machine
    assert code == 0
