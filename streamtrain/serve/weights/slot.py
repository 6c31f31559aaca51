"""The weight slot: two copies of the model, one live and one standby, swapped between requests.

Semantics (the order is the correctness argument):

3. **Versions only move forward.** ``load`` refuses a snapshot that is not newer than the live
   one by ``snapshot_order`` (version, then creation time, then run id: the same rule a new
   server uses to pick its first snapshot; reason ``stale``), one whose tensors do not fit the
   model (``shape_mismatch``) and one holding NaN/Inf (``non_finite``); the live weights stay
   as they were. Versions are compared across runs too: a trainer restarted from its
   checkpoint resumes its step count (and run id), and a run without a checkpoint starts
   counting at the newest version already on the snapshot topic.
4. **A request sees exactly one version.** A load runs, in order:

   1. check version, names, shapes, dtypes and finiteness against the standby copy — nothing
      is written before the whole snapshot is known to fit;
   2. wait (bounded by ``drain_timeout_s``) until no request still runs on the standby copy —
      the previous live copy, which requests that started before the last swap may hold;
   3. ``copy_`` every tensor into the standby's existing storage (no allocation per swap; on
      CUDA on a side stream, synchronised before step 4);
   4. flip the live reference under a short lock: requests that start afterwards get the new
      copy, requests already running finish on the old one and report its version;
   5. the old live copy becomes the standby for the next load.

   The request path takes the same short lock only to read the live reference and count
   itself in; it never waits for a load, and no lock is held across a load.
5. **Row-sparse tables are held once** (``shared``: the model's row-sparse parameters and
   buffers, see ``train/row_tracker.py``): both copies point at the same table, so a large embedding
   costs 1x, not 2x. Writing it cannot wait for the standby to drain, so step 4 becomes an
   exclusive section: new requests wait, the slot waits (``drain_timeout_s``) until no request
   runs on either copy, writes the shared tables (whole for a base, the changed rows for a
   delta), flips, and lets requests go. Requests pause for the drain plus the row writes.
   A dynamic table's mapping buffers are shared tables too: its mapping and rows change in
   that one section, and the copies' ID lookup (one, shared: they read one buffer) is
   updated in it before requests go (by the rows a delta changed; a base re-sorts). A
   mapping that would give one ID two rows, or is not int64 of the table's rows, is refused
   in step 1 (``bad_mapping``).
6. **Deltas apply in chain order** (``apply_delta``): a delta applies on a live version of its
   run from its ``predecessor_id`` up to itself (its predecessor, or a base published beside
   the deltas: ``checks.chain_gap``); any other is refused as ``chain_gap`` (the watcher then
   reloads from the newest base). The live lineage becomes the delta's ``base_id``. A
   delta's dense tensors are whole, so copying them into the standby leaves it fully
   current; its rows go to the shared tables (rule 5).
7. **A first base may be written during its read** (``fill_for``, ``standby_fill.py``): while
   nothing is live, nothing reads the standby copy (requests get NotReady, deltas need a live
   version), so a new replica's base is written into it chunk by chunk as the chunks arrive,
   its names, shapes and dtypes checked before the first byte and its finiteness as it goes.
   ``load`` given that fill (complete, the newest, nothing loaded since, the same snapshot,
   verified whole by the subscriber) checks the names and shapes again and swaps, without
   the copy; anything else takes steps 1-5. A fill abandoned half-way is never made live,
   and the next base loaded writes every tensor.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import torch
from torch import nn

from streamtrain.metrics import (
    SERVE_DATA_AGE,
    SERVE_DATA_TIMESTAMP,
    SERVE_MODEL_VERSION,
    SERVE_REJECTED_SNAPSHOTS,
    SERVE_SINCE_SWAP,
    SERVE_STREAMED_LOADS,
    SERVE_SWAP_SECONDS,
    SERVE_SWAP_TIMESTAMP,
    SERVE_SWAPS,
)
from streamtrain.serve.weights.checks import SnapshotRejected as SnapshotRejected
from streamtrain.serve.weights.checks import chain_gap, check_mappings, check_rows, check_whole
from streamtrain.serve.weights.lease import Held, Leases, ModelCopy
from streamtrain.serve.weights.lease import Lease as Lease
from streamtrain.serve.weights.lease import NotReady as NotReady
from streamtrain.serve.weights.lease import WeightsInfo as WeightsInfo
from streamtrain.serve.weights.standby_fill import StandbyFill
from streamtrain.snapshot.delta import RowUpdate, apply_rows
from streamtrain.snapshot.manifest import SnapshotHeader, SnapshotManifest, SnapshotOrder
from streamtrain.snapshot.mapped import copy_released
from streamtrain.snapshot.spool import ChunkFill
from streamtrain.train.models import dynamic_mappings

log = logging.getLogger(__name__)


class StandbyBusy(TimeoutError):
    """Requests still ran on the standby copy when the drain timeout ran out; retry later."""


class WeightSlot:
    """Live and standby copies of a model; ``load`` swaps, ``acquire`` serves.

    >>> slot = WeightSlot(nn.Linear(2, 1))
    >>> slot.load({"weight": torch.ones(1, 2), "bias": torch.zeros(1)}, SnapshotHeader(7, "r"))
    >>> with slot.acquire() as lease:
    ...     lease.info.version, lease.model(torch.ones(1, 2)).item()
    (7, 2.0)
    """

    def __init__(
        self,
        model: nn.Module,
        drain_timeout_s: float = 10.0,
        shared: frozenset[str] = frozenset(),
    ) -> None:
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        params = dict(model.named_parameters()) | dict(model.named_buffers())
        # deepcopy's memo hands back the same object: shared tables exist once (rule 5).
        memo: dict[int, object] = {id(params[name]): params[name] for name in shared}
        memo |= dynamic_mappings.derived_memo(model)  # rebuilt from the shared buffers
        self._shared = shared
        self._copies = (ModelCopy(model), ModelCopy(copy.deepcopy(model, memo)))
        self._leases = Leases()  # the live copy, the rule-5 flag and their condition
        self._standby = self._copies[0]
        self._cond = self._leases.cond
        self._load_lock = threading.Lock()  # one loader at a time; never taken by requests
        self._drain_timeout_s = drain_timeout_s
        self._fill: StandbyFill | None = None  # the newest fill made (rule 7)
        self.streamed_loads = True  # rule 7 on (bench/replica_load.py turns it off to compare)
        device = next(iter(self._standby.targets.values()), torch.empty(0)).device
        self._stream: torch.cuda.Stream | None = None
        if device.type == "cuda":
            self._stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        SERVE_DATA_AGE.set_function(self._data_age)
        SERVE_SINCE_SWAP.set_function(self._since_swap)
        SERVE_DATA_TIMESTAMP.set_function(self._data_timestamp)

    # --- request path -------------------------------------------------------------------
    @property
    def info(self) -> WeightsInfo | None:
        live = self._leases.live
        return None if live is None else live.info

    @property
    def ready(self) -> bool:
        return self._leases.live is not None

    def acquire(self) -> Held:
        """Hold the live weights for one forward pass (``with slot.acquire() as lease``);
        NotReady before the first swap."""
        return Held(self._leases)

    # --- loader path --------------------------------------------------------------------
    def fill_for(self, manifest: SnapshotManifest) -> ChunkFill | None:
        """Rule 7: a fill of the standby copy for ``manifest``'s chunks as they are read, or
        None (something is live, a delta, a CUDA model, or streamed loads turned off)."""
        if not self.streamed_loads or manifest.kind != "base" or self._stream is not None:
            return None
        with self._load_lock:
            if self._leases.live is not None:
                return None
            self._fill = StandbyFill(
                manifest.snapshot_id,
                manifest.size_bytes,
                self._standby.targets,
                self._load_lock,
                self._fill_current,
            )
            return self._fill

    def _fill_current(self, fill: StandbyFill) -> bool:
        """With the load lock held: may ``fill`` still write the standby (nothing live, no
        newer fill, no load since)?"""
        return fill is self._fill and self._leases.live is None

    def load(
        self,
        tensors: Mapping[str, torch.Tensor],
        header: SnapshotHeader,
        *,
        allow_older: bool = False,
        filled: ChunkFill | None = None,
    ) -> None:
        """Copy ``tensors`` into the standby copy and make it live (steps 1-5 above); with
        ``filled`` (rule 7), the standby already holding them, only check and swap.

        ``allow_older`` lifts rule 3 for an operator's pin or rollback to a retained version
        (``serve/weights/retained.py``); every other check still applies.
        Raises SnapshotRejected (counted by reason, live weights untouched) or StandbyBusy.
        """
        with self._load_lock:
            started = time.perf_counter()
            written = self._filled(filled, header)
            self._fill = None  # whatever happens now, the standby is no fill's any more
            self.check(
                tensors, header.version, None if allow_older else header.order, finite=not written
            )
            # A base starts its own lineage, whatever the header names.
            base = replace(header, base_id=None, predecessor_id=None)
            self._commit(tensors, {}, WeightsInfo(base, time.monotonic()), started, written)
            if written:
                SERVE_STREAMED_LOADS.inc()

    def _filled(self, filled: ChunkFill | None, header: SnapshotHeader) -> bool:
        """Rule 7: whether the standby holds ``filled``'s base whole (load lock held)."""
        return (
            isinstance(filled, StandbyFill)
            and self._fill_current(filled)
            and filled.complete
            and filled.snapshot_id == header.snapshot_id
        )

    def apply_delta(
        self,
        dense: Mapping[str, torch.Tensor],
        rows: Mapping[str, RowUpdate],
        header: SnapshotHeader,
    ) -> None:
        """Rule 6: apply a delta on the live version; SnapshotRejected(``chain_gap``, ...)
        when it does not follow it, other reasons as ``load``; or StandbyBusy."""
        with self._load_lock:
            started = time.perf_counter()
            live = self.info
            gap = chain_gap(None if live is None else live.header, header)
            if gap is not None:
                SERVE_REJECTED_SNAPSHOTS.labels("chain_gap").inc()
                raise SnapshotRejected("chain_gap", gap)
            self.check_delta(dense, rows, header.version, header.order)
            self._commit(dense, rows, WeightsInfo(header, time.monotonic()), started)

    def _commit(
        self,
        whole: Mapping[str, torch.Tensor],
        rows: Mapping[str, RowUpdate],
        info: WeightsInfo,
        started: float,
        written: bool = False,
    ) -> None:
        """Steps 2-5 (and rule 5 for shared tables): write the standby (unless ``written``
        already, rule 7), flip it live."""
        standby = self._standby
        self._fill = None  # a commit writes the standby or makes it live: no fill goes on
        self._drain(standby, info.version)
        if not written:
            self._copy_into(standby, {n: t for n, t in whole.items() if n not in self._shared})
        shared_whole = {n: t for n, t in whole.items() if n in self._shared}
        standby.info = info
        with self._cond:
            if shared_whole or rows:
                self._leases.writing = True
                try:
                    self._drain_all(info.version)
                    with torch.no_grad():
                        before = dynamic_mappings.owners_before(standby.model, rows)
                        apply_rows(standby.targets, {} if written else shared_whole, rows)
                        mapped = dynamic_mappings.mapping_writes(standby.model, shared_whole, rows)
                        models = [each.model for each in self._copies]  # in this one section
                        dynamic_mappings.refresh_lookups(models, mapped, before)
                    if self._stream is not None:
                        torch.cuda.synchronize(self._stream.device)
                finally:
                    self._leases.writing = False
                    self._cond.notify_all()
            old, self._leases.live = self._leases.live, standby
        self._standby = old if old is not None else self._other(standby)
        SERVE_SWAPS.inc()
        SERVE_SWAP_TIMESTAMP.set_to_current_time()
        SERVE_MODEL_VERSION.set(info.version)
        SERVE_SWAP_SECONDS.observe(time.perf_counter() - started)
        log.info("serving version %d of run %s", info.version, info.run_id)

    def _drain_all(self, version: int) -> None:
        """Rule 5: with ``_cond`` held and new requests held back, wait for every request."""
        if not self._cond.wait_for(
            lambda: all(c.in_flight == 0 for c in self._copies), self._drain_timeout_s
        ):
            raise StandbyBusy(
                f"version {version} not loaded: requests still ran after "
                f"{self._drain_timeout_s} s; retry later"
            )

    def settled(self) -> bool:
        """Whether a starting watcher may stop looking for a first snapshot: any will do."""
        return self.ready

    def settle(self) -> None:
        """Nothing to fall back on: the slot holds what was loaded (see ``RetainedVersions``)."""

    def is_newer(self, order: SnapshotOrder) -> bool:
        """Whether a snapshot of this order would pass the ``stale`` check."""
        live = self.info
        return live is None or order > live.order

    def check(
        self,
        tensors: Mapping[str, torch.Tensor],
        version: int,
        order: SnapshotOrder | None = None,
        *,
        finite: bool = True,
    ) -> None:
        """Step 1 alone: raise SnapshotRejected (counted and logged) unless ``tensors`` fit
        the model and are finite (not judged again with ``finite=False``: a fill judged
        them, rule 7), and (when ``order`` is given) are newer than the live ones."""

        def run() -> None:
            check_whole(self._standby.targets, tensors, self._stale(order), finite=finite)
            check_mappings(self._standby.model, tensors, {})

        self._counted(version, run)

    def check_delta(
        self,
        dense: Mapping[str, torch.Tensor],
        rows: Mapping[str, RowUpdate],
        version: int,
        order: SnapshotOrder,
    ) -> None:
        """Step 1 for a delta: whole tensors and rows fit the model, rows only on shared
        tables, finite; counted and logged like ``check``."""

        def run() -> None:
            check_rows(self._standby.targets, self._shared, dense, rows, self._stale(order))
            check_mappings(self._standby.model, dense, rows)

        self._counted(version, run)

    def _stale(self, order: SnapshotOrder | None) -> str | None:
        live = self.info
        if order is not None and live is not None and order <= live.order:
            return (
                f"version {order[0]} of run {order[2]} is not newer than the live version "
                f"{live.version} of run {live.run_id}"
            )
        return None

    def _counted(self, version: int, run_check: Callable[[], None]) -> None:
        try:
            run_check()
        except SnapshotRejected as exc:
            SERVE_REJECTED_SNAPSHOTS.labels(exc.reason).inc()
            log.warning("rejected snapshot version %d (%s): %s", version, exc.reason, exc)
            raise

    def _drain(self, standby: ModelCopy, version: int) -> None:
        with self._cond:
            if standby.in_flight == 0:
                return
            log.info(
                "version %d waits for %d request(s) still on the standby copy",
                version,
                standby.in_flight,
            )
            if not self._cond.wait_for(lambda: standby.in_flight == 0, self._drain_timeout_s):
                log.error(
                    "version %d not loaded: %d request(s) still ran on the standby copy after "
                    "%.1f s (a stuck request?); live weights unchanged, will retry",
                    version,
                    standby.in_flight,
                    self._drain_timeout_s,
                )
                raise StandbyBusy(
                    f"standby copy still in use after {self._drain_timeout_s} s; retry later"
                )

    def _copy_into(self, standby: ModelCopy, tensors: Mapping[str, torch.Tensor]) -> None:
        stream = self._stream
        with torch.no_grad():
            if stream is None:
                for name, tensor in tensors.items():
                    copy_released(standby.targets[name], tensor)
                return
            with torch.cuda.stream(stream):
                for name, tensor in tensors.items():
                    copy_released(standby.targets[name], tensor, non_blocking=True)
            # The flip happens after this returns, so no forward pass sees half-copied weights.
            stream.synchronize()

    def _other(self, copy_: ModelCopy) -> ModelCopy:
        return self._copies[1] if copy_ is self._copies[0] else self._copies[0]

    def parameter_pointers(self) -> set[int]:
        """Storage addresses of both copies' tensors (stable across swaps; used by tests)."""
        return {t.data_ptr() for c in self._copies for t in c.targets.values()}

    # --- metrics ------------------------------------------------------------------------
    def _data_age(self) -> float:
        info = self.info
        if info is None or info.data_watermark is None:
            return float("nan")
        return time.time() - info.data_watermark

    def _data_timestamp(self) -> float:
        info = self.info
        return float("nan") if info is None or info.data_watermark is None else info.data_watermark

    def _since_swap(self) -> float:
        info = self.info
        return float("nan") if info is None else time.monotonic() - info.swapped_at
