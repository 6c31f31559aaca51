"""Reachability: one log line per change of state, a periodic summary, gauge and readiness."""

from __future__ import annotations

import logging

import pytest

from streamtrain import health, metrics
from streamtrain.kafka.reachability import Reachability, tcp_probe
from tests.metrics_scrape import current


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _tracker(clock: Clock, broker_up: list[bool]) -> Reachability:
    tracker = Reachability(
        summary_every_s=60.0, probe_every_s=1.0, probe=lambda _: broker_up[0], clock=clock
    )
    tracker.configure("127.0.0.1:9")
    return tracker


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "streamtrain.kafka"]


def test_an_outage_logs_once_then_a_summary_a_minute_then_once_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock, up = Clock(), [False]
    tracker = _tracker(clock, up)
    tracker.success()  # the process had reached the cluster before the outage
    for _ in range(500):  # a client retrying every 50 ms for 25 s, plus polls in between
        tracker.failure("Connect to 127.0.0.1:9 failed: Connection refused")
        tracker.check()
        clock.now += 0.05
    assert not tracker.reachable
    assert current(metrics.KAFKA_REACHABLE_TRAINER) == 0
    assert current(metrics.KAFKA_REACHABLE_SERVER) == 0
    verdict = health.HEALTH.conditions()["kafka"]
    assert verdict[0] is False and "127.0.0.1:9" in verdict[1]
    assert len(_lines(caplog)) == 1
    clock.now = 61.0
    tracker.check()
    assert "still unreachable after 61 s (500 failed attempts)" in _lines(caplog)[-1]
    up[0] = True
    clock.now = 62.0
    tracker.check()
    assert tracker.reachable
    assert current(metrics.KAFKA_REACHABLE_TRAINER) == 1
    assert health.HEALTH.conditions()["kafka"][0] is True
    lines = _lines(caplog)
    assert len(lines) == 3 and "reachable again after 62.0 s" in lines[-1]


def test_a_process_that_never_reached_kafka_leaves_the_error_to_its_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    tracker = _tracker(Clock(), [False])
    tracker.failure("Connect to 127.0.0.1:9 failed: Connection refused")
    assert not tracker.reachable
    assert current(metrics.KAFKA_REACHABLE_TRAINER) == 0
    assert _lines(caplog) == []  # the KafkaUnreachable the caller raises is the one line


def test_one_dropped_connection_to_a_listening_broker_is_no_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    tracker = _tracker(Clock(), [True])
    tracker.failure("Disconnected: connection closed by peer (idle)")
    assert tracker.reachable
    assert _lines(caplog) == []


def test_a_refused_login_waits_for_an_answer_not_for_a_tcp_connect() -> None:
    clock, up = Clock(), [True]
    tracker = _tracker(clock, up)
    tracker.failure("SASL authentication failed", kind="refused")
    assert not tracker.reachable
    clock.now += 5
    tracker.check()  # the port answers, but the login is still refused
    assert not tracker.reachable
    tracker.success()
    assert tracker.reachable


def test_tcp_probe_against_a_closed_port_is_false() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        assert tcp_probe(f"127.0.0.1:{port}", timeout_s=0.5) is False
        sock.listen()
        assert tcp_probe(f"nowhere.invalid:1,127.0.0.1:{port}", timeout_s=0.5) is True
