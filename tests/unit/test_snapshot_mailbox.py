from __future__ import annotations

import threading

import pytest
from prometheus_client import Counter, Gauge

from streamtrain import metrics
from streamtrain.kafka import KafkaConnection
from streamtrain.snapshot.assembly import Assembler
from streamtrain.snapshot.mailbox import NewestWinsWorker
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.snapshot.verify import Chunk
from streamtrain.train.hooks import SnapshotRequest
from tests.manifest_fixtures import placeholder_manifest
from tests.metrics_scrape import current

WAIT = 5.0


class SlowHandler:
    """Blocks inside each call until released, so the test decides when a publish ends."""

    def __init__(self) -> None:
        self.handled: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, item: int) -> None:
        self.started.set()
        assert self.release.wait(WAIT), "test never released the handler"
        self.handled.append(item)


def test_newest_wins_while_a_publish_is_running() -> None:
    handler = SlowHandler()
    superseded: list[int] = []
    worker = NewestWinsWorker(handler, name="test", on_superseded=superseded.append)
    worker.offer(1)
    assert handler.started.wait(WAIT)  # item 1 is being handled, the slot is empty
    worker.offer(2)
    worker.offer(3)  # replaces 2
    worker.offer(4)  # replaces 3
    assert superseded == [2, 3]
    assert not worker.flush(0.01)  # 1 is still blocked
    handler.release.set()
    assert worker.flush(WAIT)
    assert handler.handled == [1, 4]
    assert worker.close(WAIT)


def test_close_publishes_the_pending_item_then_refuses_offers() -> None:
    handler = SlowHandler()
    worker = NewestWinsWorker(handler, name="test")
    worker.offer(1)
    assert handler.started.wait(WAIT)
    worker.offer(2)
    handler.release.set()
    assert worker.close(WAIT)
    assert handler.handled == [1, 2]
    try:
        worker.offer(3)
    except RuntimeError as exc:
        assert "after close" in str(exc)
    else:
        raise AssertionError("offer after close was accepted")


def test_a_failing_handler_does_not_stop_the_worker() -> None:
    seen: list[int] = []

    def handle(item: int) -> None:
        seen.append(item)
        if item == 1:
            raise ValueError("broker down")

    worker = NewestWinsWorker(handle, name="test")
    worker.offer(1)
    assert worker.flush(WAIT)
    worker.offer(2)
    assert worker.flush(WAIT)
    assert seen == [1, 2]
    assert worker.close(WAIT)


def test_on_start_runs_on_the_worker_thread_before_the_first_item() -> None:
    order: list[tuple[str, str]] = []
    release = threading.Event()

    def start() -> None:
        order.append(("start", threading.current_thread().name))
        assert release.wait(WAIT), "test never released the start"

    worker: NewestWinsWorker[int] = NewestWinsWorker(
        lambda item: order.append((f"item {item}", threading.current_thread().name)),
        name="starting",
        on_start=start,
    )
    worker.offer(1)  # offered while the start runs: it waits for it
    assert not worker.flush(0.05)
    release.set()
    assert worker.flush(WAIT)
    assert order == [("start", "starting"), ("item 1", "starting")]
    assert worker.close(WAIT)


def test_a_failing_on_start_is_logged_and_the_worker_serves_items(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    def start() -> None:
        raise ConnectionError("broker down")

    worker: NewestWinsWorker[int] = NewestWinsWorker(
        seen.append, name="failing-start", on_start=start
    )
    worker.offer(1)
    assert worker.flush(WAIT)
    assert seen == [1]
    assert "background start of failing-start failed" in caplog.text
    assert worker.close(WAIT)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_assembler_drops_an_abandoned_snapshot_when_the_run_moves_on() -> None:
    assembler = Assembler(max_bytes=10_000)
    assert assembler.add("run/1", Chunk(0, 3, b"x" * 10), offset=0) == []
    rejected = assembler.add("run/2", Chunk(0, 3, b"y" * 10), offset=1)
    assert [(r.reason, r.version) for r in rejected] == [("incomplete", 1)]
    assert assembler.add("other/1", Chunk(0, 3, b"z"), offset=2) == []  # other runs untouched
    assert len(assembler) == 2


def test_assembler_bounds_bytes_count_and_age() -> None:
    clock = FakeClock()
    assembler = Assembler(max_bytes=25, max_pending=2, stale_after_s=10, clock=clock)
    assembler.add("a/1", Chunk(0, 3, b"x" * 20), offset=0)
    oversize = assembler.add("a/1", Chunk(1, 3, b"x" * 20), offset=1)
    assert [(r.reason, r.version) for r in oversize] == [("size", 1)]
    assembler.add("b/1", Chunk(0, 2, b"1"), offset=2)
    assembler.add("c/1", Chunk(0, 2, b"1"), offset=3)
    evicted = assembler.add("d/1", Chunk(0, 2, b"1"), offset=4)
    assert [r.detail.split(":")[0] for r in evicted] == ["snapshot b/1"]
    clock.now = 11.0
    assert assembler.expire(caught_up=False) == []  # a lagging reader has not read it yet
    assert sorted(r.reason for r in assembler.expire(caught_up=True)) == ["incomplete"] * 2
    assert len(assembler) == 0


def test_assembler_restarts_on_chunk_zero_and_hands_over_chunks() -> None:
    assembler = Assembler(max_bytes=100)
    assembler.add("r/1", Chunk(0, 2, b"old"), offset=0)
    assembler.add("r/1", Chunk(1, 2, b"old"), offset=1)
    assembler.add("r/1", Chunk(0, 2, b"new"), offset=2)
    spool = assembler.take("r/1")
    assert spool.indices() == {0}
    assert spool.read_all() == b"new"  # spooled to its file, not kept in memory
    assert len(assembler.take("r/1")) == 0


class FakeWriter:
    """Stands in for the Kafka writer: records versions, blocks until released."""

    topic = "fake"

    def __init__(self) -> None:
        self.slow = SlowHandler()

    def write(self, request: SnapshotRequest, **_chain: str | None) -> SnapshotManifest:
        request.wait_ready()
        self.slow(request.version)
        if request.version == 99:
            raise OSError("broker unreachable")
        return placeholder_manifest(request.run_id, request.version)

    def close(self, timeout: float) -> None:
        return None


def _request(version: int, ready: list[int] | None = None) -> SnapshotRequest:
    return SnapshotRequest(
        version=version,
        run_id="run",
        tensors={},
        data_watermark=None,
        offsets={},
        created_at=0.0,
        wait_ready=(lambda: ready.append(version)) if ready is not None else (lambda: None),
    )


def _value(metric: Counter | Gauge) -> float:
    return current(metric)


def test_publisher_counts_superseded_published_and_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = SnapshotPublisher(
        kafka=KafkaConnection("127.0.0.1:1"),
        topic="t",
        model_name="m",
        settings_hash="a" * 64,
    )
    fake = FakeWriter()
    monkeypatch.setattr(publisher, "_writer", fake)
    before = {
        m: _value(m)
        for m in (
            metrics.SNAPSHOTS_SUPERSEDED,
            metrics.SNAPSHOTS_PUBLISHED,
            metrics.SNAPSHOT_PUBLISH_ERRORS,
        )
    }
    ready: list[int] = []
    publisher.offer(_request(1, ready))
    assert fake.slow.started.wait(WAIT)
    publisher.offer(_request(2, ready))
    publisher.offer(_request(3, ready))
    publisher.offer(_request(99, ready))  # supersedes 3, then fails
    fake.slow.release.set()
    assert publisher.flush(WAIT)
    assert fake.slow.handled == [1, 99]
    assert ready == [1, 99]  # wait_ready ran on the worker, only for what was published
    assert _value(metrics.SNAPSHOTS_SUPERSEDED) - before[metrics.SNAPSHOTS_SUPERSEDED] == 2
    assert _value(metrics.SNAPSHOTS_PUBLISHED) - before[metrics.SNAPSHOTS_PUBLISHED] == 1
    assert _value(metrics.SNAPSHOT_PUBLISH_ERRORS) - before[metrics.SNAPSHOT_PUBLISH_ERRORS] == 1
    assert _value(metrics.SNAPSHOT_VERSION) == 1
    publisher.close(WAIT)
