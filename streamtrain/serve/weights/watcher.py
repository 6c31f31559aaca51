"""The snapshot watcher: a thread that feeds snapshots from the topic into the weight slot.

Order of work:

1. on start, load the newest valid snapshot of the local cache (when configured): the server
   is ready, holding valid weights, before Kafka has answered at all;
2. then take the topic's verified snapshots newest first (``snapshot_order``) and load the
   first the slot accepts: one the slot refuses (NaN, wrong shapes) falls back to the next
   older one; one not newer than the live weights ends the search;
3. then poll for new ones; of the snapshots one poll returns, the newest the slot accepts is
   loaded (older ones are superseded, not rejected); snapshots the source refused (signature,
   incomplete, corrupt, other configuration) are counted by reason and logged once, and the
   live weights stay;
4. every base made live from the topic is written to the cache (deltas never are);
4a. deltas apply in order on the live version; a delta that does not follow it (a gap) makes
    the watcher catch up from the topic: the newest base and the deltas after it
    (``delta_chain.py``);
4b. the shards of a sharded trainer's step become one snapshot only once all have arrived
    (``snapshot/shard_assembly.py``), on the topic's tail and in every catch-up alike;
5. a snapshot the slot could not load because requests still held the standby copy is kept and
   retried on the next round, unless a newer one replaces it;
6. Kafka errors (broker unreachable) are logged once when they start, as a summary every
   ``summary_every_s`` while they last, and once when they end, never per attempt; they are
   retried with exponential backoff, and the live weights keep serving.

>>> import torch
>>> from streamtrain.serve.weights.slot import WeightSlot
>>> slot = WeightSlot(torch.nn.Linear(2, 1))
>>> watcher = SnapshotWatcher(source=NoSnapshots(), loader=slot)
>>> watcher.handle([])
>>> slot.ready
False
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import Protocol, get_args

from streamtrain.metrics import SERVE_REJECTED_SNAPSHOTS, export_at_zero
from streamtrain.serve.weights.checks import SLOT_REASONS
from streamtrain.serve.weights.delta_chain import apply_delta, catch_up, is_delta
from streamtrain.serve.weights.loader import SnapshotLoader
from streamtrain.serve.weights.slot import SnapshotRejected, StandbyBusy
from streamtrain.snapshot.cache import SnapshotCache
from streamtrain.snapshot.manifest import SnapshotOrder
from streamtrain.snapshot.shard_assembly import ShardAssembly
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot, RejectReason

log = logging.getLogger(__name__)

# Newest-first and chain order: the manifest's ``order`` (``snapshot_order``), nothing else.
_ORDER = attrgetter("manifest.order")


class SnapshotSource(Protocol):
    """Where snapshots come from: ``SnapshotSubscriber`` in production."""

    def catch_up_order(
        self, timeout_s: float, wanted: Callable[[SnapshotOrder], bool]
    ) -> Iterable[ReceivedSnapshot]: ...

    def poll(self, timeout_s: float) -> Sequence[ReceivedSnapshot | RejectedSnapshot]: ...

    def close(self) -> None: ...


class NoSnapshots:
    """A source with nothing to offer, ever: a server that keeps the weights it was given
    (examples and tests)."""

    def catch_up_order(
        self, timeout_s: float, wanted: Callable[[SnapshotOrder], bool]
    ) -> Iterable[ReceivedSnapshot]:
        return []

    def poll(self, timeout_s: float) -> Sequence[ReceivedSnapshot | RejectedSnapshot]:
        time.sleep(timeout_s)  # a real source blocks until its timeout when nothing arrives
        return []

    def close(self) -> None:
        return None


class SnapshotWatcher:
    """Runs ``source`` → ``loader`` (and ``cache``) on a daemon thread until ``stop``."""

    def __init__(
        self,
        source: SnapshotSource,
        loader: SnapshotLoader,
        poll_timeout_s: float = 0.5,
        startup_timeout_s: float = 60.0,
        error_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        cache: SnapshotCache | None = None,
        summary_every_s: float = 300.0,
    ) -> None:
        self._source = source
        self._loader = loader
        self._cache = cache
        self._poll_timeout_s = poll_timeout_s
        self._startup_timeout_s = startup_timeout_s
        self._error_backoff_s = error_backoff_s
        self._max_backoff_s = max_backoff_s
        self._summary_every_s = summary_every_s
        self._outage_since = self._last_summary = 0.0
        self._pending: ReceivedSnapshot | None = None
        self._shards = ShardAssembly()  # rule 4b
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)
        if isinstance(source, SnapshotSubscriber):  # a new replica's base filled as it is read
            source.fill_for = loader.fill_for
        # Every reason at 0 from the start: one forged snapshot is then an increase() of 1.
        export_at_zero(
            SERVE_REJECTED_SNAPSHOTS, [(r,) for r in (*get_args(RejectReason), *SLOT_REASONS)]
        )

    def start(self) -> SnapshotWatcher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._source.close()

    def handle(self, items: Sequence[ReceivedSnapshot | RejectedSnapshot]) -> None:
        """Count rejections, load the newest received base the slot accepts, then apply the
        received deltas newer than the live version in order.

        Bases (and one left pending by a busy standby copy) are tried newest first: one the
        slot refuses gives way to the next, the first loaded supersedes the rest, and a busy
        standby keeps the one it was offered pending for the next round. A delta that does
        not follow the live version triggers a catch-up from the topic (rule 4a).
        """
        received = [self._pending] if self._pending is not None else []
        for item in self._shards.offer(items):
            if isinstance(item, RejectedSnapshot):
                self._count_rejection(item)
            else:
                received.append(item)
        self._pending = None
        bases = [s for s in received if not is_delta(s)]
        for tried, snapshot in enumerate(sorted(bases, key=_ORDER, reverse=True)):
            if tried and not self._loader.is_newer(snapshot.manifest.order):
                break  # older than the live weights: superseded, not counted again
            loaded = self._try_load(snapshot)
            if loaded is None:
                self._pending = snapshot  # standby busy: retry next round
                return
            if loaded:
                break
        for delta in sorted((s for s in received if is_delta(s)), key=_ORDER):
            if not self._loader.is_newer(delta.manifest.order):
                continue
            outcome = apply_delta(self._loader, delta)
            if outcome == "busy":
                self._pending = delta
                return
            if outcome == "gap":
                catch_up(self._catch_up_order(), self._loader, self._try_load)
                return

    def _catch_up_order(self) -> Iterable[ReceivedSnapshot]:
        return self._shards.newest_first(
            self._source.catch_up_order(self._startup_timeout_s, self._loader.is_newer)
        )

    def _count_rejection(self, item: RejectedSnapshot) -> None:
        SERVE_REJECTED_SNAPSHOTS.labels(item.reason).inc()
        what = "snapshot record" if item.version is None else f"snapshot version {item.version}"
        log.warning("%s rejected (%s): %s", what, item.reason, item.detail)

    def _try_load(self, snapshot: ReceivedSnapshot, from_cache: bool = False) -> bool | None:
        """True when live, False when the slot refused it (counted there), None when busy."""
        manifest = snapshot.manifest
        try:
            self._loader.load(snapshot.tensors, manifest.header, filled=snapshot.filled)
        except StandbyBusy:
            return None  # logged by the slot
        except SnapshotRejected:
            return False  # counted and logged by the slot
        if self._cache is not None and not from_cache and manifest.kind == "base":
            try:
                self._cache.store(snapshot)
            except OSError as exc:
                log.warning(
                    "could not write version %d to the snapshot cache %s: %s; serving goes on",
                    manifest.version,
                    self._cache.directory,
                    exc,
                )
        return True

    def _load_cache(self) -> None:
        """Step 1: the newest cached snapshot that passes every check, if any (while an
        operator's pin holds, newer ones are offered too, until the pinned one is live)."""
        if self._cache is None:
            return
        for item in self._cache.newest_first():
            if isinstance(item, RejectedSnapshot):
                self._count_rejection(item)
                continue
            if self._try_load(item, from_cache=True) and self._loader.settled():
                log.info(
                    "serving cached version %d of run %s until the snapshot topic is read",
                    item.manifest.version,
                    item.manifest.run_id,
                )
                return
        self._loader.settle()

    def _load_newest(self) -> None:
        """Step 2: the newest base on the topic the slot accepts, then the deltas after it."""
        catch_up(self._catch_up_order(), self._loader, self._try_load)
        if self._loader.info is None:
            log.info("no valid snapshot on the topic yet: not ready until the trainer publishes")

    def _run(self) -> None:
        try:
            self._load_cache()
        except OSError as exc:
            log.warning("snapshot cache unreadable (%s); starting from the topic alone", exc)
        started = False
        failures = 0
        while not self._stop.is_set():
            try:
                if not started:
                    self._load_newest()
                    started = True
                else:
                    self.handle(self._source.poll(self._poll_timeout_s))
            except Exception as exc:
                failures += 1
                self._on_failure(exc, failures)
                delay = min(self._max_backoff_s, self._error_backoff_s * 2 ** min(failures - 1, 16))
                self._stop.wait(delay)
                continue
            if failures:
                log.info(
                    "snapshot topic readable again after %d failed attempt(s) over %.0f s",
                    failures,
                    time.monotonic() - self._outage_since,
                )
                failures = 0

    def _on_failure(self, exc: Exception, failures: int) -> None:
        """One line when reading starts failing, a summary now and then, attempts at debug."""
        now = time.monotonic()
        if failures == 1:
            self._outage_since = self._last_summary = now
            log.warning(
                "cannot read snapshot topic (%s: %s); %s; retrying with backoff up to %.0f s",
                type(exc).__name__,
                exc,
                self._serving(),
                self._max_backoff_s,
            )
            return
        # The traceback only at debug level: an outage is an expected state, not a bug.
        log.debug("snapshot topic still unreadable (attempt %d): %s", failures, exc, exc_info=True)
        if now - self._last_summary >= self._summary_every_s:
            self._last_summary = now
            log.warning(
                "snapshot topic still unreadable after %.0f s (%d attempts, last: %s); %s",
                now - self._outage_since,
                failures,
                exc,
                self._serving(),
            )

    def _serving(self) -> str:
        info = self._loader.info
        if info is None:
            return "not ready until a snapshot can be read"
        return f"serving version {info.version} meanwhile"
