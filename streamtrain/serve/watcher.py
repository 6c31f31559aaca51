"""The snapshot watcher: a thread that feeds snapshots from the topic into the weight slot.

Order of work:

1. on start, ask the source for the newest valid snapshot already on the topic and load it
   (the server turns ready as soon as one snapshot is live);
2. then poll for new ones; of the snapshots one poll returns, only the newest is loaded (the
   older ones are superseded, not rejected); snapshots the source refused (incomplete, corrupt,
   other configuration) are counted by reason and logged, and the live weights stay;
3. a snapshot the slot could not load because requests still held the standby copy is kept and
   retried on the next round, unless a newer one replaces it.

>>> from streamtrain.serve.version_fixtures import tiny_regression_model, version_weights
>>> slot = WeightSlot(tiny_regression_model(2))
>>> watcher = SnapshotWatcher(source=_Empty(), slot=slot)
>>> watcher.handle([])
>>> slot.ready
False
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from streamtrain.metrics import SERVE_REJECTED_SNAPSHOTS
from streamtrain.serve.slot import SnapshotRejected, StandbyBusy, WeightSlot

log = logging.getLogger(__name__)


class ManifestLike(Protocol):
    @property
    def run_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def data_watermark(self) -> float | None: ...


@runtime_checkable
class ReceivedLike(Protocol):
    """A complete, verified snapshot (``streamtrain.snapshot.subscriber.ReceivedSnapshot``)."""

    @property
    def manifest(self) -> ManifestLike: ...
    @property
    def tensors(self) -> Mapping[str, torch.Tensor]: ...


@runtime_checkable
class RejectedLike(Protocol):
    """A snapshot the subscriber refused (``RejectedSnapshot``): reason is a metric label."""

    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def version(self) -> int | None: ...


class SnapshotSource(Protocol):
    """Where snapshots come from: ``SnapshotSubscriber`` in production."""

    def latest(self, timeout_s: float) -> ReceivedLike | None: ...

    def poll(self, timeout_s: float) -> Sequence[ReceivedLike | RejectedLike]: ...

    def close(self) -> None: ...


class _Empty:
    def latest(self, timeout_s: float) -> ReceivedLike | None:
        return None

    def poll(self, timeout_s: float) -> Sequence[ReceivedLike | RejectedLike]:
        time.sleep(timeout_s)  # a real source blocks until its timeout when nothing arrives
        return []

    def close(self) -> None:
        return None


class SnapshotWatcher:
    """Runs ``source`` → ``slot`` on a daemon thread until ``stop``."""

    def __init__(
        self,
        source: SnapshotSource,
        slot: WeightSlot,
        poll_timeout_s: float = 0.5,
        startup_timeout_s: float = 10.0,
        error_backoff_s: float = 1.0,
    ) -> None:
        self._source = source
        self._slot = slot
        self._poll_timeout_s = poll_timeout_s
        self._startup_timeout_s = startup_timeout_s
        self._error_backoff_s = error_backoff_s
        self._pending: ReceivedLike | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)

    def start(self) -> SnapshotWatcher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._source.close()

    def handle(self, items: Sequence[ReceivedLike | RejectedLike]) -> None:
        """Count rejections, then load the newest received snapshot (or retry a pending one)."""
        for item in items:
            if isinstance(item, ReceivedLike):
                current = self._pending
                if current is None or item.manifest.version > current.manifest.version:
                    self._pending = item
            elif isinstance(item, RejectedLike):
                SERVE_REJECTED_SNAPSHOTS.labels(item.reason).inc()
                log.warning(
                    "snapshot version %s rejected (%s): %s", item.version, item.reason, item.detail
                )
        snapshot = self._pending
        if snapshot is None:
            return
        manifest = snapshot.manifest
        try:
            self._slot.load(
                snapshot.tensors,
                version=manifest.version,
                run_id=manifest.run_id,
                data_watermark=manifest.data_watermark,
            )
        except StandbyBusy:
            return  # logged by the slot; keep it pending and retry next round
        except SnapshotRejected:
            pass  # counted and logged by the slot
        self._pending = None

    def _run(self) -> None:
        started = False
        while not self._stop.is_set():
            try:
                if not started:
                    first = self._source.latest(self._startup_timeout_s)
                    started = True
                    self.handle([first] if first is not None else [])
                else:
                    self.handle(self._source.poll(self._poll_timeout_s))
            except Exception:
                log.exception(
                    "reading snapshots failed; serving the current weights and retrying in %.1f s",
                    self._error_backoff_s,
                )
                self._stop.wait(self._error_backoff_s)
