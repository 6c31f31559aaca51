"""The two stop-signal paths no other test pins down, each made certain in a child process.

1. A server that gets SIGTERM while it is still starting (its side servers and watcher start
   before uvicorn installs its own handlers) exits promptly, status 0, without a traceback.
   ``ServingWorker.run`` installs a handler that asks uvicorn to exit once started; before
   it (commit c5d42cd) the handler ignored the signal and the server ran on until killed.
   Here the watcher's ``start`` sends the signal, so it lands inside that window every time.
2. A trainer that gets SIGTERM before its restore has finished takes the default action: it
   dies by the signal at once (Kafka client calls of a restore run no Python handler until
   they return, so a handler would wait out their timeouts). Once restored, the same signal
   asks for a stop at a step boundary and the process exits 0 with its summary line. Here a
   stand-in trainer sends the signal from inside ``run``, before or after ``on_restored``.

The children run ``streamtrain.cli.train._run`` and ``ServingWorker.run``, the code the CLI
runs, in their main thread (signal handlers are the main thread's).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A child answers within a few seconds (imports included); a stuck one is killed at this.
BOUND_S = 60.0

SERVER = """
import os, signal
import torch
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.server import ServingWorker
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import NoSnapshots, SnapshotWatcher
from tests.serve_fixtures import app_for, served_model


class SignalledWhileStarting(SnapshotWatcher):
    def start(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's handlers are not installed yet
        super().start()


served = served_model(WeightSlot(torch.nn.Linear(2, 1)), SampleSpec((2,), "regression"), "m")
worker = ServingWorker(
    app=app_for(served), served=served,
    watcher=SignalledWhileStarting(NoSnapshots(), served.slot), host="127.0.0.1", port=0,
)
worker.run()
print("server stopped", flush=True)
"""

TRAINER = """
import os, signal, sys, threading
from streamtrain.cli.train import _run, _serve_metrics
from streamtrain.config import load_settings
from streamtrain.train.progress import TrainSummary

AFTER_RESTORE = sys.argv[1] == "after"


class StandIn:
    stopped = threading.Event()

    def run(self, on_restored):
        if AFTER_RESTORE:
            on_restored()
        os.kill(os.getpid(), signal.SIGTERM)
        # A restore (or a loop) that a handler would have to wait out; a stop ends it.
        if not self.stopped.wait(30):
            raise SystemExit("the signal neither ended the process nor asked for a stop")
        return TrainSummary(steps=3, samples_seen=9, run_id="r", stop_reason="signal",
                            elapsed_seconds=0.1)

    def request_stop(self):
        self.stopped.set()


settings = load_settings(None, {"train": {"metrics_port": 0, "device": "cpu"}})
_run(settings, StandIn(), _serve_metrics(settings))
"""


def _child(code: str, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BOUND_S,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_a_server_signalled_while_starting_exits_0_promptly() -> None:
    code, output, _ = _child(SERVER)
    assert code == 0, output
    assert "server stopped" in output, output
    assert "Traceback" not in output, output


def test_a_trainer_signalled_before_its_restore_dies_by_the_signal() -> None:
    code, output, _ = _child(TRAINER, "before")
    assert code == -signal.SIGTERM, output
    assert "Traceback" not in output, output
    assert "stopped (" not in output, output


def test_a_trainer_signalled_after_its_restore_stops_and_exits_0() -> None:
    code, output, _ = _child(TRAINER, "after")
    assert code == 0, output
    assert "stopped (signal) run r at step 3: 9 samples learned" in output, output
    assert "Traceback" not in output, output
