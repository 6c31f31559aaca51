"""A server's snapshot tail across a broker that came back empty with a longer log.

The tail follows the snapshot topic at its own position. After the outage the new log has
grown past that position before the server looks; without the fingerprint check the tail would
resume there and never see the new log's first snapshots. With it, the record at the tail's
last position is re-read, found different, and the new log is read from its start.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtrain.broker import EmbeddedBroker
from streamtrain.kafka import KafkaClient, KafkaConnection, create_topics
from streamtrain.kafka.reachability import REACHABILITY
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.verify import ReceivedSnapshot
from tests.integration.snapshot_harness import publish, serve_settings


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    yield embedded
    embedded.stop()


def _versions(subscriber: SnapshotSubscriber, wanted: set[int], timeout_s: float) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while not wanted <= seen and time.monotonic() < deadline:
        for item in subscriber.poll(0.2):
            if isinstance(item, ReceivedSnapshot):
                seen.add(item.manifest.version)
    return seen


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_the_tail_reads_a_replaced_longer_log_from_its_start(
    broker: EmbeddedBroker, unique_name: str, client: KafkaClient
) -> None:
    settings = serve_settings(broker.bootstrap_servers, f"{unique_name}.snapshots")
    topic = settings.topics.snapshots
    create_topics(broker.bootstrap_servers, [topic])
    for version in (1, 2, 3):
        publish(settings, version)
    subscriber = SnapshotSubscriber(
        kafka=KafkaConnection(broker.bootstrap_servers, client=client),
        topic=topic,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
    )
    try:
        assert subscriber.latest() is not None  # the tail is placed at the end (offset 6)
        publish(settings, 4)  # offsets 6, 7: the tail's last record is 7
        assert _versions(subscriber, {4}, 30) == {4}

        broker.stop()
        deadline = time.monotonic() + 30
        while REACHABILITY.reachable and time.monotonic() < deadline:
            subscriber.poll(0.2)  # the clients notice the outage
        assert not REACHABILITY.reachable
        broker.start()  # same port, empty
        create_topics(broker.bootstrap_servers, [topic])
        new = set(range(10, 16))  # 12 records: past the tail's old position (8)
        for version in sorted(new):
            publish(settings, version)
        assert _versions(subscriber, new, 60) == new  # 10..13 are before the old position
    finally:
        subscriber.close()
