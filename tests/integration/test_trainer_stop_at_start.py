"""SIGTERM as the trainer starts, with the broker no longer answering, ends it promptly.

The trainer prints its metrics URL once it is built, then restores (the newest checkpoint, the
newest version on the snapshot topic, the positions) and starts its loop and prefetch thread.
Until the restore is done a stop signal keeps its default action (nothing is learned or
written before the first step; Kafka client calls run no Python handler until they return);
after it, the loop stops at once and the prefetch thread, blocked on the silent broker, is
given 3 s. Before: 13 s here (the prefetch thread's 10 s, or the restore's Kafka timeouts).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from streamtrain.broker import EmbeddedBroker
from tests.integration.cli_process import await_output, running_cli
from tests.integration.trainer_harness import trainer_env

# 5.5 s here (3 s of it the prefetch thread's bound), so this is a bound on a hang, not a
# measure of the gain (13 s before).
STOP_BOUND_S = 20.0


def test_sigterm_at_start_with_the_broker_silent_ends_the_trainer_promptly(
    tmp_path: Path, unique_name: str
) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    assert broker.pid is not None
    paused = False
    try:
        env = trainer_env(broker.bootstrap_servers, unique_name, tmp_path / "ckpt")
        with running_cli(["train"], env) as (process, output):
            await_output(output, r"^trainer metrics: (\S+)")
            # The broker stops answering as the restore begins.
            os.kill(broker.pid, signal.SIGSTOP)
            paused = True
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(120)
            took = time.monotonic() - signalled
        text = output.text()
        assert took < STOP_BOUND_S, f"{took:.1f} s to stop:\n{text}"
        assert code in (0, -signal.SIGTERM), text
        assert "Traceback" not in text, text
    finally:
        if paused:
            os.kill(broker.pid, signal.SIGCONT)
        broker.stop()
