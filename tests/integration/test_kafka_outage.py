"""A real trainer process through a broker outage: killed broker, then one back empty.

Each test runs its own embedded broker (the session one must not die) on a fixed port, and a
``streamtrain train`` process against it. While the broker is down the trainer's real
/metrics must show ``streamtrain_kafka_reachable 0`` and /health/ready 503, with a bounded
number of log lines; once a broker is back on the same port with an empty topic (as after a
re-created topic), the trainer follows ``ingest.on_offset_reset``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from streamtrain.broker import EmbeddedBroker
from tests.integration.process_output import REQUEST_S, ProcessOutput, await_condition
from tests.integration.trainer_harness import (
    hyperplane_stream,
    produce_json,
    scrape,
    start_trainer,
    trainer_env,
)

# Runs again with kafka-python in CI (make test-integration-kafka-python): its Kafka path
# differs by client library.
pytestmark = pytest.mark.kafka_client

RESETS = 'streamtrain_ingest_offset_resets_total{partition="0",policy="%s"}'
SAMPLES = "streamtrain_ingest_samples_total"
REACHABLE = "streamtrain_kafka_reachable"
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass
class RunningTrainer:
    process: subprocess.Popen[str]
    output: ProcessOutput
    base_url: str

    def metrics(self) -> dict[str, float]:
        return scrape(f"{self.base_url}/metrics")

    def ready_status(self) -> int:
        try:
            with urllib.request.urlopen(
                f"{self.base_url}/health/ready", timeout=REQUEST_S
            ) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    yield embedded
    embedded.stop()


@contextmanager
def _start(
    broker: EmbeddedBroker, name: str, tmp_path: Path, policy: str, kafka_client: str
) -> Iterator[RunningTrainer]:
    env = trainer_env(
        broker.bootstrap_servers,
        name,
        tmp_path / "checkpoints",
        {
            "STREAMTRAIN_KAFKA__CLIENT": kafka_client,
            "STREAMTRAIN_INGEST__ON_OFFSET_RESET": policy,
            "STREAMTRAIN_INGEST__START_FROM": "earliest",
            "STREAMTRAIN_INGEST__MAX_BATCH_SIZE": "32",
            "STREAMTRAIN_TRAIN__SNAPSHOT_EVERY_SECONDS": "1",
            "STREAMTRAIN_TRAIN__CHECKPOINT_EVERY_SECONDS": "1",
        },
    )
    process = start_trainer(env)
    output = ProcessOutput()
    threading.Thread(target=output.follow, args=(process,), daemon=True).start()
    try:
        await_condition(lambda: "trainer metrics:" in output.text(), "the metrics URL")
        found = re.search(r"trainer metrics: (http://[\d.]+:\d+)/metrics", output.text())
        assert found, output.text()
        yield RunningTrainer(process, output, found.group(1))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _logged_since(lines: list[str], wall: float) -> list[str]:
    """``lines`` less those whose own log timestamp is before ``wall`` (``time.time()``): the
    reader thread of a starved test process can take a line logged before the kill off the
    pipe after it. A line without a timestamp (a continuation) is kept."""
    kept = []
    for line in lines:
        stamp = _LOG_TIME.match(line)
        if stamp is None or _wall_time(stamp.group(1)) >= wall:
            kept.append(line)
    return kept


def _wall_time(stamp: str) -> float:
    # logging's asctime: local time, milliseconds after a comma (streamtrain/cli/common.py).
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _learn_then_lose_the_broker(
    trainer: RunningTrainer, broker: EmbeddedBroker, first: int
) -> tuple[float, float, float]:
    """Wait until ``first`` samples are learned, kill the broker, wait for the trainer to
    notice; returns (killed at, killed at by the wall clock, noticed at)."""
    await_condition(lambda: trainer.metrics().get(SAMPLES, 0) >= first, f"{first} samples")
    assert trainer.metrics()[REACHABLE] == 1.0
    # Taken before the stop: the trainer may see the connection drop, and log it, while
    # stop() is still waiting for the broker process to exit.
    killed, killed_wall = time.monotonic(), time.time()
    broker.stop()  # returns once the process is gone
    noticed = await_condition(lambda: trainer.metrics().get(REACHABLE) == 0.0, "reachable 0")
    assert trainer.ready_status() == 503
    return killed, killed_wall, noticed


def test_outage_is_visible_and_quiet_then_a_re_created_topic_is_read_from_its_start(
    broker: EmbeddedBroker, unique_name: str, tmp_path: Path, kafka_client: str
) -> None:
    x, y = hyperplane_stream(400, seed=5)
    topic = f"{unique_name}-samples"
    produce_json(broker.bootstrap_servers, topic, x[:300], y[:300])
    with _start(broker, unique_name, tmp_path, "earliest", kafka_client) as trainer:
        killed, killed_wall, noticed = _learn_then_lose_the_broker(trainer, broker, 300)
        # Stay down for a while: the log must not grow per connection attempt.
        time.sleep(5.0)  # the outage itself, not a stand-in for synchronisation
        outage_lines = _logged_since(trainer.output.between(killed, time.monotonic()), killed_wall)
        assert len(outage_lines) <= 6, "\n".join(outage_lines)
        assert sum("is unreachable" in line for line in outage_lines) == 1, outage_lines
        assert trainer.process.poll() is None

        restarted = time.monotonic()
        broker.start()  # same port, empty: the topic comes back without its 300 records
        produce_json(broker.bootstrap_servers, topic, x[300:], y[300:])
        recovered = await_condition(
            lambda: trainer.metrics().get(SAMPLES, 0) >= 400, "the new log's 100 samples"
        )
        metrics = trainer.metrics()
        # Every record of the new log was learned from: none skipped, none counted twice.
        assert metrics[SAMPLES] == 400
        assert metrics[RESETS % "earliest"] == 1.0
        assert metrics[REACHABLE] == 1.0, trainer.output.text()
        await_condition(lambda: trainer.ready_status() == 200, "ready again")
        text = trainer.output.text()
        assert text.count("is reachable again") == 1, text
        assert text.count("no longer holds the trainer's position") == 1, text
        print(
            f"\n[{kafka_client}] outage noticed {noticed - killed:.2f} s after the kill; "
            f"learning again {recovered - restarted:.2f} s after the broker restart "
            "(restart, topic re-created, 100 samples produced)"
        )


def test_fail_policy_exits_with_code_6_and_one_line(
    broker: EmbeddedBroker, unique_name: str, tmp_path: Path, kafka_client: str
) -> None:
    x, y = hyperplane_stream(300, seed=6)
    topic = f"{unique_name}-samples"
    produce_json(broker.bootstrap_servers, topic, x[:200], y[:200])
    with _start(broker, unique_name, tmp_path, "fail", kafka_client) as trainer:
        _learn_then_lose_the_broker(trainer, broker, 200)
        broker.start()
        produce_json(broker.bootstrap_servers, topic, x[200:], y[200:])
        code = trainer.process.wait(60)
        assert code == 6, trainer.output.text()
        errors = [line for _, line in trainer.output.lines if line.startswith("error: ")]
        assert len(errors) == 1, trainer.output.text()
        assert "ingest.on_offset_reset=fail" in errors[0], errors
        assert "partition 0 at offset 200" in errors[0], errors
