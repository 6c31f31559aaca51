"""A real `streamtrain join` process through a broker outage: killed broker, then one back empty.

The test runs its own embedded broker (the session one must not die) and a join against it.
While the broker is down the join must stay up, with ``streamtrain_kafka_reachable 0`` and
/health/ready 503 on its real endpoints, /health/live 200, and a bounded number of log lines.
The broker then comes back on the same port without its data, so the join's checkpoints no
longer describe any log: under ``join.on_log_lost=earliest`` it starts over in-process and
joins what is produced after the restart, each id exactly once; under ``fail`` it stops with
exit code 6 and one line (docs/join.md#broker-outages).
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.kafka import KafkaConnection
from tests.integration.join_harness import (
    JoinCase,
    JoinTopics,
    join_env,
    join_metric,
    joined_once,
    make_topics,
    metrics_url,
    produce_labels,
    produce_predictions,
    start_join,
    stop_join,
    wait_for_records,
)
from tests.integration.process_output import REQUEST_S, ProcessOutput, await_condition
from tests.integration.tcp_cut import TcpCut
from tests.integration.trainer_harness import scrape

REACHABLE = "streamtrain_kafka_reachable"
ASSIGNED = "streamtrain_join_assigned_partitions"
AGE = "streamtrain_join_checkpoint_age_seconds"
RESETS = "streamtrain_join_log_resets_total"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_S) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    yield embedded
    embedded.stop()


def _ids(start: int, stop: int) -> list[str]:
    return [f"r-{i}" for i in range(start, stop)]


def _feed(kafka: KafkaConnection, topics: JoinTopics, ids: list[str]) -> dict[str, int]:
    produce_predictions(kafka, topics.predictions, ids, time.time())
    labels = {rid: int(rid.rsplit("-", 1)[1]) % 2 for rid in ids}
    produce_labels(kafka, topics.labels, labels)
    return labels


@dataclass
class RunningJoin:
    process: subprocess.Popen[str]
    output: ProcessOutput
    env: dict[str, str]

    @classmethod
    def start(cls, env: dict[str, str]) -> RunningJoin:
        """A `streamtrain join` whose output a thread follows as it comes."""
        join = cls(start_join(env), ProcessOutput(), env)
        threading.Thread(target=join.output.follow, args=(join.process,), daemon=True).start()
        return join

    @property
    def base_url(self) -> str:
        return metrics_url(self.env).removesuffix("/metrics")

    def metrics(self) -> dict[str, float]:
        return scrape(metrics_url(self.env))


@contextmanager
def _joined_then_broker_killed(
    broker: EmbeddedBroker, kafka: KafkaConnection, topics: JoinTopics, tmp_path: Path, policy: str
) -> Iterator[RunningJoin]:
    """A join that joined 100 ids and checkpointed them, then a broker outage of 5 s checked
    from the join's endpoints and log; yields with the broker still down."""
    make_topics(kafka, topics, partitions=1)
    extra = {
        "STREAMTRAIN_JOIN__CHECKPOINT_EVERY_S": "1",
        "STREAMTRAIN_JOIN__WINDOW_S": "600",
        "STREAMTRAIN_JOIN__ON_LOG_LOST": policy,
    }
    env = join_env(kafka, topics, tmp_path / "state", extra)
    join = RunningJoin.start(env)
    try:
        join_metric(metrics_url(env), ASSIGNED, 0.5, timeout=60)
        _feed(kafka, topics, _ids(0, 100))
        wait_for_records(kafka, topics.samples, 100, timeout=60)
        # A checkpoint after the 100 samples: its end offsets are what the join checks after
        # the outage (the age gauge restarts at each checkpoint).
        seen = time.monotonic()
        await_condition(lambda: join.metrics()[AGE] < time.monotonic() - seen, "a checkpoint")
        assert join.metrics()[REACHABLE] == 1.0

        killed = time.monotonic()
        broker.stop()
        await_condition(lambda: join.metrics().get(REACHABLE) == 0.0, "reachable 0")
        assert _status(f"{join.base_url}/health/ready") == 503
        time.sleep(5.0)  # the outage itself, not a stand-in for synchronisation
        assert _status(f"{join.base_url}/health/live") == 200
        assert _status(f"{join.base_url}/health/ready") == 503
        assert join.process.poll() is None, join.output.text()
        during = join.output.since(killed)
        assert len(during) <= 6, "\n".join(during)
        assert sum("is unreachable" in line for line in during) == 1, during
        yield join
    finally:
        if join.process.poll() is None:
            join.process.kill()
            join.process.wait(30)
        print(join.output.text())  # shown by pytest when the test fails


def test_join_rides_out_an_outage_then_starts_over_on_an_emptied_broker(
    broker: EmbeddedBroker, kafka_client: str, unique_name: str, tmp_path: Path
) -> None:
    kafka = KafkaConnection(broker.bootstrap_servers, client=kafka_client)  # type: ignore[arg-type]
    topics = JoinTopics.named(unique_name)
    with _joined_then_broker_killed(broker, kafka, topics, tmp_path, "earliest") as join:
        restarted = time.monotonic()
        broker.start()  # same port, empty: the join's samples and inputs are gone
        make_topics(kafka, topics, partitions=1)
        labels = _feed(kafka, topics, _ids(100, 150))
        wait_for_records(kafka, topics.samples, 50, timeout=60)
        await_condition(lambda: join.metrics().get(REACHABLE) == 1.0, "reachable 1")
        await_condition(lambda: _status(f"{join.base_url}/health/ready") == 200, "ready again")
        assert join.metrics()[RESETS] == 1.0
        code, _ = stop_join(join.process)
        assert code == 0, join.output.text()
        after = join.output.since(restarted)
        assert sum("is reachable again" in line for line in after) == 1, after
        # One start-over for the lost samples; an input topic found replaced first (the check
        # after the interruption may see the new, shorter labels log before the samples check
        # runs) is said once per topic at most, and changes nothing the start-over does not.
        assert sum("no longer holds the join's samples" in line for line in after) == 1, after
        input_resets = [line for line in after if "is not the log the join read" in line]
        assert len(input_resets) <= 2, input_resets

    # Every id produced after the restart, each once.
    for rid, sample in joined_once(kafka, topics.samples, labels).items():
        assert int.from_bytes((sample.value or b"")[16:24], "little") == labels[rid]


def test_join_with_on_log_lost_fail_exits_with_code_6_and_one_line(
    broker: EmbeddedBroker, kafka_client: str, unique_name: str, tmp_path: Path
) -> None:
    kafka = KafkaConnection(broker.bootstrap_servers, client=kafka_client)  # type: ignore[arg-type]
    topics = JoinTopics.named(unique_name)
    with _joined_then_broker_killed(broker, kafka, topics, tmp_path, "fail") as join:
        broker.start()
        make_topics(kafka, topics, partitions=1)
        code = join.process.wait(60)
        assert code == 6, join.output.text()
        errors = [line for _, line in join.output.lines if line.startswith("error: ")]
        assert len(errors) == 1, join.output.text()
        error = errors[0]
        assert "join.on_log_lost=fail" in error, errors
        # The emptied broker lost both the samples the checkpoints saw and the input logs the
        # join read; which one the join notices first depends on which it reads first after
        # the outage (docs/labels.md: join.on_log_lost covers both).
        if "no longer holds the join's samples" in error:
            assert str(tmp_path / "state") in error, errors
        else:
            lost_inputs = (f"{topics.predictions} partition 0", f"{topics.labels} partition 0")
            assert any(name in error for name in lost_inputs), errors
            assert "is not the log the join read" in error, errors


@pytest.fixture
def cut_broker(tmp_path: Path) -> Iterator[TcpCut]:
    """An embedded broker reached only through a :class:`TcpCut` (its advertised port)."""
    port = free_port()
    cut = TcpCut(port)
    embedded = EmbeddedBroker(port=port, advertised_port=cut.port, log_path=tmp_path / "b.log")
    cut.restore()
    embedded.start()
    yield cut
    cut.cut()
    embedded.stop()


def test_join_rides_out_an_outage_that_keeps_the_data_and_joins_each_id_once(
    cut_broker: TcpCut, kafka_client: str, unique_name: str, tmp_path: Path
) -> None:
    kafka = KafkaConnection(f"127.0.0.1:{cut_broker.port}", client=kafka_client)  # type: ignore[arg-type]
    case = JoinCase.create(kafka, unique_name, tmp_path, partitions=1)
    topics = case.topics
    extra = {"STREAMTRAIN_JOIN__CHECKPOINT_EVERY_S": "1", "STREAMTRAIN_JOIN__WINDOW_S": "600"}
    env = case.env(extra)
    join = RunningJoin.start(env)
    try:
        join_metric(metrics_url(env), ASSIGNED, 0.5, timeout=60)
        labels = _feed(kafka, topics, _ids(0, 100))
        # Predictions whose labels come only after the outage: pending state the join must
        # keep through it (the group revokes its partition meanwhile).
        produce_predictions(kafka, topics.predictions, _ids(100, 200), time.time())
        wait_for_records(kafka, topics.samples, 100, timeout=60)
        await_condition(
            lambda: join.metrics().get("streamtrain_join_pending_predictions_records") == 100, "100"
        )

        cut = time.monotonic()
        cut_broker.cut()
        await_condition(lambda: join.metrics().get(REACHABLE) == 0.0, "reachable 0")
        time.sleep(4.0)  # the outage itself, past the 2 s session timeout
        assert _status(f"{join.base_url}/health/ready") == 503
        assert _status(f"{join.base_url}/health/live") == 200
        assert join.process.poll() is None, join.output.text()
        during = join.output.since(cut)
        assert len(during) <= 6, "\n".join(during)
        assert sum("is unreachable" in line for line in during) == 1, during

        cut_broker.restore()  # the same broker, its logs intact
        later = {rid: int(rid.rsplit("-", 1)[1]) % 2 for rid in _ids(100, 200)}
        produce_labels(kafka, topics.labels, later)
        labels |= later | _feed(kafka, topics, _ids(200, 250))
        wait_for_records(kafka, topics.samples, 250, timeout=60)
        await_condition(lambda: join.metrics().get(REACHABLE) == 1.0, "reachable 1")
        await_condition(lambda: _status(f"{join.base_url}/health/ready") == 200, "ready again")
        assert join.metrics().get(RESETS, 0.0) == 0.0
        code, _ = stop_join(join.process)
        assert code == 0, join.output.text()
    finally:
        if join.process.poll() is None:
            join.process.kill()
            join.process.wait(30)
        print(join.output.text())  # shown by pytest when the test fails

    for rid, sample in joined_once(kafka, topics.samples, labels).items():
        assert int.from_bytes((sample.value or b"")[16:24], "little") == labels[rid]
