"""Whole snapshots written with a short GIL switch interval, deltas without (``lanes.py``
``write_counted``, ``snapshot/gil_handoff.py``, issue 26), on the real broker: the delta
lane's first, whole, snapshot and a scheduled base on the base lane are written at
``HANDOFF_S``, a delta at the interpreter's own interval, which is back once they are done."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.snapshot.gil_handoff import HANDOFF_S
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.writer import SnapshotWriter
from tests.delta_fixtures import SparseTrainer, sparse_publisher, tracked_request

HASH = "e" * 64
DEFAULT_S = 0.005


def test_whole_snapshots_are_written_with_a_short_switch_interval_and_deltas_are_not(
    kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sys.getswitchinterval()
    sys.setswitchinterval(DEFAULT_S)
    create_topics(KafkaConnection(kafka_bootstrap), [unique_name], partitions=2)
    written: list[tuple[str, str, float]] = []  # kind, the writing thread, the interval
    real_write = SnapshotWriter.write

    def recorded_write(self: SnapshotWriter, *args: Any, **kwargs: Any) -> SnapshotManifest:
        interval = sys.getswitchinterval()
        manifest = real_write(self, *args, **kwargs)
        written.append((manifest.kind, threading.current_thread().name, interval))
        return manifest

    monkeypatch.setattr(SnapshotWriter, "write", recorded_write)
    trainer = SparseTrainer(base_every_deltas=1)  # whole, delta, then a scheduled base
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=4096)
    try:
        for _ in range(3):
            trainer.train(2)
            publisher.offer(tracked_request(trainer, "run-g"))
            assert publisher.flush(60)
        after = sys.getswitchinterval()
    finally:
        publisher.close(30)
        sys.setswitchinterval(before)
    lanes = [(kind, name.startswith("snapshot-base-lane")) for kind, name, _ in written]
    assert lanes == [("base", False), ("delta", False), ("base", True)]
    intervals = [interval for _, _, interval in written]
    assert intervals == pytest.approx([HANDOFF_S, DEFAULT_S, HANDOFF_S], abs=2e-6)
    assert after == pytest.approx(DEFAULT_S, abs=2e-6)
