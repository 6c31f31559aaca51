"""The publisher's bulk work at a lower CPU priority than training (``publisher.py`` rule 8,
``streamtrain/thread_priority.py``, issue 26), on the real broker: a whole snapshot is written
on the bulk thread at nice + ``BULK_NICE`` and a scheduled base on the base lane at the same,
while deltas are written on the delta lane at the trainer's own nice, and so are the Kafka
client threads of the delta lane's producer (made before its first, whole, snapshot).

A process already at nice 19 (``nice -n 19 make test``) has no lower priority to give: there
the expected nices equal the starting one, and the threads' identities are still checked."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.thread_priority import BULK_NICE
from tests.delta_fixtures import SparseTrainer, sparse_publisher, tracked_request

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice is Linux's"
)
HASH = "e" * 64
TASKS = Path(f"/proc/{os.getpid()}/task")


def _nice(native_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, native_id)


def _threads() -> set[int]:
    """The ids of this process's threads, Python's and native ones (a Kafka client's)."""
    return {int(entry.name) for entry in TASKS.iterdir()}


def test_whole_snapshots_and_bases_are_written_at_the_bulk_priority_and_deltas_are_not(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = _nice(threading.get_native_id())
    lowered = min(19, own + BULK_NICE)
    create_topics(KafkaConnection(kafka_bootstrap), [unique_name], partitions=2)
    written: list[tuple[str, str, int]] = []  # kind, the writing thread's name, its nice
    real_write = SnapshotWriter.write

    def recorded_write(self: SnapshotWriter, *args: Any, **kwargs: Any) -> SnapshotManifest:
        manifest = real_write(self, *args, **kwargs)
        lane = "base lane" if self.lane else "delta lane writer"
        me = threading.current_thread()
        written.append((f"{manifest.kind} ({lane})", me.name, _nice(threading.get_native_id())))
        return manifest

    monkeypatch.setattr(SnapshotWriter, "write", recorded_write)
    trainer = SparseTrainer(base_every_deltas=1)  # whole, delta, then a scheduled base
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=4096)
    before = _threads()  # the publisher's lanes are started, its producers are not
    try:
        for _ in range(2):
            trainer.train(2)
            publisher.offer(tracked_request(trainer, "run-b"))
            assert publisher.flush(60)
        # the threads started since: the bulk thread and the delta lane producer's client
        # threads (librdkafka's, or kafka-python's network thread), read while they run
        bulk = {t.native_id for t in threading.enumerate() if t.name.startswith("snapshot-bulk")}
        delta_lane_clients = {tid: _nice(tid) for tid in _threads() - before - bulk}
        trainer.train(2)
        publisher.offer(tracked_request(trainer, "run-b"))  # complete: to the base lane
        assert publisher.flush(60)
    finally:
        publisher.close(30)
    by_kind = {kind: (name, nice) for kind, name, nice in written}
    assert list(by_kind) == [
        "base (delta lane writer)",
        "delta (delta lane writer)",
        "base (base lane)",
    ]
    whole, delta, base = by_kind.values()
    assert whole[0].startswith(f"snapshot-bulk-{unique_name}") and whole[1] == lowered
    assert delta[0] == f"snapshot-publisher-{unique_name}" and delta[1] == own
    assert base[0] == f"snapshot-base-lane-{unique_name}" and base[1] == lowered
    assert delta_lane_clients, "the delta lane's producer started no client thread"
    assert set(delta_lane_clients.values()) == {own}
