"""Retained versions and the operator's pin: the last K verified versions stay in memory, any
of them answers ``/v2/models/{m}/versions/{v}/infer``, and one can be pinned as the live one.

The watcher hands every snapshot here instead of to the slot directly. Rules, in order:

1. A snapshot is checked by the slot (names, shapes, finiteness) before anything else; one it
   refuses is neither live nor retained.
2. Not pinned: it goes live exactly as before (versions only move forward), then is retained.
   Pinned: it is only retained; the pinned version stays live.
3. Retained are the ``keep`` newest versions plus the live and the pinned one, which are never
   evicted. Each is a copy of the model on the serving device: memory is (2 + ``keep``, plus
   one while pinned outside the newest ``keep``) times the model's parameter bytes, the 2
   being the slot's live and standby copies.
4. ``pin(v)`` makes retained version ``v`` live (older or not) and records the pin beside the
   snapshot cache (when there is one) after the swap, so a restart finds it; ``unpin()`` makes
   the newest retained version live; ``rollback()`` pins the newest retained version older
   than the live one.
5. At start, with a recorded pin, the watcher keeps offering cached snapshots until the pinned
   one is live (:meth:`settled`); when it is not found, :meth:`settle` drops the pin (logged)
   and serves the newest: a server must not stay unready for a version it no longer has.
6. Watcher loads and operator calls are serialised by one lock.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from streamtrain.metrics import SERVE_PINNED_VERSION, SERVE_RETAINED_VERSIONS
from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.serve.weights.fast_forward import Forward, dense_forward
from streamtrain.serve.weights.inference import (
    Array,
    Head,
    PassTimer,
    Prediction,
    call_model,
    to_host,
)
from streamtrain.serve.weights.slot import StandbyBusy, WeightsInfo, WeightSlot
from streamtrain.snapshot.cache import SnapshotCache
from streamtrain.snapshot.delta import RowUpdate
from streamtrain.snapshot.manifest import SnapshotHeader, SnapshotManifest, SnapshotOrder
from streamtrain.snapshot.mapped import copy_released
from streamtrain.snapshot.spool import ChunkFill
from streamtrain.train.models import dynamic_mappings

log = logging.getLogger(__name__)


class AdminError(ValueError):
    """An operator request that cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Retained:
    info: WeightsInfo
    model: nn.Module
    forward: Forward  # the model's direct forward where it has one, else the model


class RetainedVersions:
    """The slot's loader with memory: retained versions, pin, unpin, rollback (rules 1-6)."""

    def __init__(
        self,
        slot: WeightSlot,
        template: nn.Module,
        head: Head,
        device: torch.device,
        keep: int,
        pin_store: SnapshotCache | None = None,
    ) -> None:
        self._slot = slot
        self._template = template.eval()
        self._head = head
        self._device = device
        self._timer = PassTimer(device)  # retained versions share the live model's shape
        self._keep = keep
        self._pin_store = pin_store
        self._versions: dict[int, _Retained] = {}
        self._lock = threading.RLock()
        self._pinned = None if pin_store is None else pin_store.read_pin()
        if pin_store is not None and self._pinned is not None:
            log.info("version %d is pinned (recorded in %s)", self._pinned, pin_store.directory)
        self._publish_metrics()

    @property
    def keep(self) -> int:
        return self._keep

    # --- the watcher's side (same calls as WeightSlot) -------------------------------------
    @property
    def info(self) -> WeightsInfo | None:
        return self._slot.info

    def is_newer(self, order: SnapshotOrder) -> bool:
        """Newer than everything live or retained (so, while pinned, worth retaining)."""
        orders = [r.info.order for r in list(self._versions.values())]
        live = self._slot.info
        if live is not None:
            orders.append(live.order)
        return not orders or order > max(orders)

    def fill_for(self, manifest: SnapshotManifest) -> ChunkFill | None:
        """The slot's fill of a new replica's first base (``WeightSlot.fill_for``), unless a
        pin decides which version goes live."""
        return None if self._pinned is not None else self._slot.fill_for(manifest)

    def load(
        self,
        tensors: Mapping[str, torch.Tensor],
        header: SnapshotHeader,
        *,
        filled: ChunkFill | None = None,
    ) -> None:
        """Rules 1-3; raises SnapshotRejected or StandbyBusy like ``WeightSlot.load``."""
        version = header.version
        with self._lock:
            pinned = self._pinned
            live = self._slot.info
            if pinned is None:
                self._slot.load(tensors, header, filled=filled)
            elif version == pinned and (live is None or live.version != pinned):
                self._slot.load(tensors, header, allow_older=True)
            else:
                self._slot.check(tensors, version)
                log.info("version %d retained; version %d stays live (pinned)", version, pinned)
            self._retain(tensors, WeightsInfo(header, time.monotonic()))

    def apply_delta(
        self,
        dense: Mapping[str, torch.Tensor],
        rows: Mapping[str, RowUpdate],
        header: SnapshotHeader,
    ) -> None:
        """Deltas go to the slot unless pinned (then the pinned version stays as it is); they
        are not retained: pin and rollback choose among retained bases, and after an unpin
        the next delta finds a gap and the watcher catches up from the topic."""
        with self._lock:
            if self._pinned is not None:
                log.debug(
                    "delta version %d not applied: version %d is pinned",
                    header.version,
                    self._pinned,
                )
                return
            self._slot.apply_delta(dense, rows, header)

    def settled(self) -> bool:
        """Rule 5: startup may stop once the pinned version (or, unpinned, any) is live."""
        live = self._slot.info
        return live is not None and (self._pinned is None or live.version == self._pinned)

    def settle(self) -> None:
        """Rule 5: the pinned version was not found; drop the pin and serve the newest."""
        with self._lock:
            if self.settled() or self._pinned is None:
                return
            log.warning(
                "pinned version %d is not in the snapshot cache; unpinning and serving the "
                "newest version instead (pin it again with `streamtrain admin pin`)",
                self._pinned,
            )
            self._set_pin(None)
            newest = self._newest()
            if newest is not None and not self._slot.is_newer(newest.info.order):
                return
            if newest is not None:
                self._make_live(newest)

    # --- the operator's side -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        live = self._slot.info
        return {
            "live": None if live is None else str(live.version),
            "pinned": None if self._pinned is None else str(self._pinned),
            "retained": [str(v) for v in self.versions()],
            "pin_persisted": self._pin_store is not None,
        }

    def pin(self, version: int) -> dict[str, Any]:
        with self._lock:
            entry = self._versions.get(version)
            if entry is None:
                raise AdminError(
                    404,
                    f"version {version} is not retained; retained versions: "
                    f"{[str(v) for v in self.versions()]} (raise serve.retain_versions to keep "
                    "more)",
                )
            self._make_live(entry)
            self._set_pin(version)
            log.info("version %d pinned by an operator", version)
            return self.state()

    def unpin(self) -> dict[str, Any]:
        with self._lock:
            newest = self._newest()
            live = self._slot.info
            if newest is not None and (live is None or newest.info.order > live.order):
                self._make_live(newest)
            self._set_pin(None)
            log.info("unpinned by an operator; newest versions go live again")
            return self.state()

    def rollback(self) -> dict[str, Any]:
        with self._lock:
            live = self._slot.info
            if live is None:
                raise AdminError(409, "nothing to roll back: no version is live yet")
            older = [r for r in list(self._versions.values()) if r.info.order < live.order]
            if not older:
                raise AdminError(
                    409,
                    f"no retained version older than the live version {live.version}; "
                    "retained: " + str([str(v) for v in self.versions()]),
                )
            target = max(older, key=lambda r: r.info.order)
            self._make_live(target)
            self._set_pin(target.info.version)
            log.info(
                "rolled back from version %d to %d (pinned)", live.version, target.info.version
            )
            return self.state()

    # --- requests for a named version ----------------------------------------------------
    def versions(self) -> list[int]:
        """Retained versions, newest first."""
        # list() copies the values in one step: request threads read while the watcher writes.
        ranked = sorted(list(self._versions.values()), key=lambda r: r.info.order, reverse=True)
        return [r.info.version for r in ranked]

    def has(self, version: int) -> bool:
        return version in self._versions

    async def infer(
        self, version: int, features: Array, sparse: SparseRows | None = None
    ) -> Prediction | None:
        """Run ``features`` on retained ``version``; None when it is not retained."""
        entry = self._versions.get(version)
        if entry is None:
            return None
        # a small pass runs on the event loop as the live engine's does (no thread hop)
        return await self._timer.infer(features.shape[0], self._forward, entry, features, sparse)

    def _forward(self, entry: _Retained, features: Array, sparse: SparseRows | None) -> Prediction:
        with torch.inference_mode():
            outputs = self._head(call_model(entry.forward, features, sparse, self._device))
            return Prediction(entry.info, to_host(outputs, self._device))

    # --- internals -------------------------------------------------------------------------
    def _retain(self, tensors: Mapping[str, torch.Tensor], info: WeightsInfo) -> None:
        model = copy.deepcopy(self._template, dynamic_mappings.derived_memo(self._template))
        for param in model.parameters():
            param.requires_grad_(False)
        with torch.no_grad():  # names and shapes were checked by the slot (rule 1)
            for name, target in model.state_dict().items():
                copy_released(target, tensors[name])
        self._versions[info.version] = _Retained(info, model, dense_forward(model) or model)
        live = self._slot.info
        protected = {self._pinned, None if live is None else live.version}
        for version in self.versions()[self._keep :]:
            if version not in protected:
                del self._versions[version]
        self._publish_metrics()

    def _newest(self) -> _Retained | None:
        versions = self.versions()
        return self._versions[versions[0]] if versions else None

    def _make_live(self, entry: _Retained) -> None:
        live = self._slot.info
        if live is not None and live.order == entry.info.order:
            return
        try:
            self._slot.load(entry.model.state_dict(), entry.info.header, allow_older=True)
        except StandbyBusy as exc:
            raise AdminError(503, f"{exc}: requests still hold the standby copy") from None

    def _set_pin(self, version: int | None) -> None:
        self._pinned = version
        self._publish_metrics()
        if self._pin_store is None:
            return
        try:
            self._pin_store.write_pin(version)
        except OSError as exc:
            log.error("could not record the pin in %s: %s", self._pin_store.directory, exc)

    def _publish_metrics(self) -> None:
        SERVE_PINNED_VERSION.set(self._pinned or 0)
        SERVE_RETAINED_VERSIONS.set(len(self._versions))
