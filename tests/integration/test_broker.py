from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamtrain.broker import BrokerUnavailable, EmbeddedBroker, find_broker_binary
from tests.integration.process_output import REQUEST_S


def test_embedded_broker_round_trip_and_stops() -> None:
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None
        broker.create_topics(["roundtrip"], partitions=2)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        producer.send("roundtrip", b"hello", partition=1).get(timeout=REQUEST_S)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
        tp = TopicPartition("roundtrip", 1)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records = consumer.poll(timeout_ms=5000).get(tp, [])
        consumer.close()
        assert [r.value for r in records] == [b"hello"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_broker_stops_when_body_raises() -> None:
    broker = EmbeddedBroker()
    with pytest.raises(RuntimeError, match="boom"), broker:
        pid = broker.pid
        raise RuntimeError("boom")
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_binary_explains_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRAIN_TANSU_BINARY", "/nonexistent/tansu")
    with pytest.raises(BrokerUnavailable, match="does not name a file"):
        find_broker_binary()


def test_the_demos_broker_runs_in_a_session_of_its_own_like_the_other_children(
    tmp_path: Path,
) -> None:
    """So that with autogroup scheduling it is scheduled as the trainer and server it feeds
    (processes.py, module docstring), not starved inside the demo's niced group."""
    with EmbeddedBroker(log_path=tmp_path / "broker.log", own_session=True) as broker:
        assert broker.pid is not None
        assert os.getsid(broker.pid) == broker.pid != os.getsid(0)


def test_a_broker_that_dies_on_start_is_started_again_on_another_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker can die on start on the port it chose (another process took the port first,
    or the fork before its exec crashed in a test process with gRPC's threads: SIGABRT, CI
    saw it once): start() tries a new port, twice at most. A port the caller named is not
    changed, and the failure is said."""
    real = find_broker_binary()
    marker = tmp_path / "died-once"
    wrapper = tmp_path / "tansu-dies-once"
    wrapper.write_text(
        f"#!/bin/sh\nif [ ! -e {marker} ]; then touch {marker}; kill -ABRT $$; fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("STREAMTRAIN_TANSU_BINARY", str(wrapper))
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")
    first = broker.port
    with broker:
        assert marker.exists(), "the first start died"
        assert broker.port != first and broker.advertised_port == broker.port
        broker.create_topics(["t"])
    marker.unlink()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as spare:
        spare.bind(("127.0.0.1", 0))
        named_port = spare.getsockname()[1]
    named = EmbeddedBroker(port=named_port, log_path=tmp_path / "named.log")
    with pytest.raises(BrokerUnavailable, match=f"port {named_port}"):
        named.start()
