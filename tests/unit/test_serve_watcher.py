"""The watcher's choices: newest snapshot the slot accepts, cache first, quiet retries."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import SnapshotWatcher
from streamtrain.snapshot.cache import SnapshotCache
from streamtrain.snapshot.manifest import SnapshotManifest, SnapshotOrder, settings_hash
from streamtrain.snapshot.payload import encode_state, sha256_hex
from streamtrain.snapshot.signing import ManifestVerifier
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot, verify_payload
from tests.version_fixtures import tiny_regression_model, version_weights

HASH = settings_hash({"name": "linear"})
MODEL = tiny_regression_model(4)


def _snapshot(
    version: int, *, run_id: str = "run", created_at: float | None = None, nan: bool = False
) -> ReceivedSnapshot:
    tensors = version_weights(MODEL, version)
    if nan:
        tensors["0.weight"][0, 0] = float("nan")
    payload, infos = encode_state(tensors)
    manifest = SnapshotManifest(
        model_name="linear",
        settings_hash=HASH,
        run_id=run_id,
        version=version,
        created_at=float(version) if created_at is None else created_at,
        data_watermark=None,
        offsets={},
        tensors=infos,
        size_bytes=len(payload),
        sha256=sha256_hex(payload),
        chunk_count=1,
        chunk_bytes=len(payload),
        first_chunk_offset=0,
    )
    result = verify_payload(manifest, payload)
    assert isinstance(result, ReceivedSnapshot)
    return dataclasses.replace(result, raw_manifest=manifest.model_dump_json().encode())


class _Topic:
    """A source holding fixed snapshots; ``fail_first`` calls raise like an unreachable broker."""

    def __init__(self, snapshots: Sequence[ReceivedSnapshot], fail_first: int = 0) -> None:
        self.snapshots = list(snapshots)
        self.fail_first = fail_first
        self.calls = 0
        self.offered: list[int] = []
        self.reached = threading.Event()
        self.finished = threading.Event()
        self.available = threading.Event()
        self.available.set()

    def catch_up_order(
        self, timeout_s: float, wanted: Callable[[SnapshotOrder], bool]
    ) -> Iterator[ReceivedSnapshot]:
        """Newest first (these tests hold no base older than a delta), each read only while
        ``wanted``, as the subscriber does."""
        self.calls += 1
        if self.calls <= self.fail_first or not self.available.is_set():
            raise ConnectionError("broker 127.0.0.1:1 refused the connection")
        self.reached.set()
        for snapshot in sorted(self.snapshots, key=lambda s: s.manifest.order, reverse=True):
            if wanted(snapshot.manifest.order):
                self.offered.append(snapshot.manifest.version)
                yield snapshot
        self.finished.set()

    def poll(self, timeout_s: float) -> Sequence[ReceivedSnapshot | RejectedSnapshot]:
        time.sleep(min(timeout_s, 0.05))
        return []

    def close(self) -> None:
        return None


def _slot() -> WeightSlot:
    return WeightSlot(tiny_regression_model(4))


def _wait(condition: object, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _run(source: _Topic, slot: WeightSlot, **kwargs: object) -> SnapshotWatcher:
    return SnapshotWatcher(source, slot, poll_timeout_s=0.05, **kwargs).start()  # type: ignore[arg-type]


def test_new_replica_falls_back_past_a_poisoned_newest_snapshot() -> None:
    slot = _slot()
    # Offset order would put the old run's late version 5 last; snapshot_order ranks 9, 8, 5.
    topic = _Topic([_snapshot(8), _snapshot(9, nan=True), _snapshot(5, run_id="oldrun")])
    watcher = _run(topic, slot)
    try:
        _wait(lambda: slot.info is not None, "a version")
        assert slot.info is not None and (slot.info.version, slot.info.run_id) == (8, "run")
        _wait(lambda: topic.offered == [9, 8], "the search to stop at 8")
    finally:
        watcher.stop()


def test_one_poll_with_a_poisoned_newest_loads_the_next_one() -> None:
    slot = _slot()
    watcher = SnapshotWatcher(_Topic([]), slot)
    watcher.handle([_snapshot(6)])
    watcher.handle([_snapshot(9), _snapshot(10, nan=True), _snapshot(7)])
    assert slot.info is not None and slot.info.version == 9
    watcher.handle([_snapshot(5, run_id="oldrun", created_at=1e12)])  # late, lower: stale
    assert slot.info is not None and slot.info.version == 9


def test_cache_serves_before_the_topic_answers_then_the_topic_wins(tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path, settings_hash=HASH, verifier=ManifestVerifier([], "off"))
    cache.store(_snapshot(4))
    slot = _slot()
    topic = _Topic([_snapshot(6)])
    topic.available.clear()  # Kafka unreachable
    watcher = _run(topic, slot, cache=cache, error_backoff_s=0.05, max_backoff_s=0.1)
    try:
        _wait(lambda: slot.info is not None, "the cached version")
        assert slot.info is not None and slot.info.version == 4
        _wait(lambda: topic.calls >= 2, "a retry")
        assert slot.info.version == 4 and not topic.reached.is_set()
        topic.available.set()  # Kafka is back
        _wait(lambda: slot.info is not None and slot.info.version == 6, "the topic's version")
        # What the topic made live was cached too.
        _wait(
            lambda: [i.manifest.version for i in cache.newest_first()] == [6, 4],
            "the new version in the cache",
        )
    finally:
        watcher.stop()


def test_cached_version_newer_than_the_topic_stays(tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path, settings_hash=HASH, verifier=ManifestVerifier([], "off"))
    cache.store(_snapshot(7))
    slot = _slot()
    topic = _Topic([_snapshot(6), _snapshot(5)])
    watcher = _run(topic, slot, cache=cache)
    try:
        _wait(topic.finished.is_set, "the topic")
        assert topic.offered == []  # nothing older than the cached version is even read
        assert slot.info is not None and slot.info.version == 7
    finally:
        watcher.stop()


def test_unreachable_kafka_logs_once_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="streamtrain.serve.weights.watcher")
    slot = _slot()
    topic = _Topic([_snapshot(3)], fail_first=4)
    watcher = _run(topic, slot, error_backoff_s=0.01, max_backoff_s=0.05)
    try:
        _wait(lambda: slot.info is not None, "the version after the outage")
    finally:
        watcher.stop()
    records = [r for r in caplog.records if r.name == "streamtrain.serve.weights.watcher"]
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "not ready" in warnings[0].getMessage()
    assert all(r.exc_info is None for r in warnings)
    assert sum("still unreadable" in r.getMessage() for r in records) == 3
    assert any("readable again after 4" in r.getMessage() for r in records)


def test_a_long_outage_is_summarised_not_logged_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="streamtrain.serve.weights.watcher")
    slot = _slot()
    topic = _Topic([_snapshot(3)])
    topic.available.clear()
    watcher = _run(topic, slot, error_backoff_s=0.02, max_backoff_s=0.02, summary_every_s=0.3)
    try:
        _wait(
            lambda: sum("still unreadable after" in r.getMessage() for r in caplog.records) >= 2,
            "two summaries",
        )
        topic.available.set()
        _wait(lambda: slot.info is not None, "the version after the outage")
    finally:
        watcher.stop()
    records = [r for r in caplog.records if r.name == "streamtrain.serve.weights.watcher"]
    attempts = 1 + sum("(attempt" in r.getMessage() for r in records)
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) < attempts / 2, (len(warnings), attempts)
    assert "not ready until a snapshot can be read" in warnings[-1].getMessage()
    assert any("readable again after" in r.getMessage() for r in records)
