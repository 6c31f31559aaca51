"""Following a chain of delta snapshots on the server (``docs/snapshots.md``, Deltas).

1. A delta applies only on the snapshot it names as ``predecessor_id``, in the lineage of its
   ``base_id`` (``WeightSlot.apply_delta`` checks both); anything else is a *gap*.
2. On a gap (a delta lost, corrupt or refused, a server that joined late, a base rotated
   out) :func:`catch_up` reads the topic newest first: the deltas newer than the live version
   are kept by predecessor until it reaches either the live version (nothing to reload) or
   the newest base the slot accepts (loaded); then it applies the kept deltas that link, in
   order. A chain that breaks stops there: the server stays on the last version it could
   reach, whole and consistent, until the next base.
3. Deltas never go to the local cache: it keeps bases, and a server starting from its cache
   catches up from the topic (rule 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol

import torch

from streamtrain.serve.slot import SnapshotRejected, StandbyBusy, WeightsInfo
from streamtrain.snapshot.delta import DeltaError, RowUpdate, split_delta
from streamtrain.snapshot.manifest import SnapshotOrder, snapshot_id, snapshot_order

log = logging.getLogger(__name__)
Outcome = Literal["live", "refused", "gap", "busy"]


class Received(Protocol):
    """A verified snapshot (``ReceivedSnapshot``); its manifest may be a base or a delta."""

    @property
    def manifest(self) -> Any: ...
    @property
    def tensors(self) -> Mapping[str, torch.Tensor]: ...


class DeltaLoader(Protocol):
    @property
    def info(self) -> WeightsInfo | None: ...

    def is_newer(self, order: SnapshotOrder) -> bool: ...

    def apply_delta(
        self,
        dense: Mapping[str, torch.Tensor],
        rows: Mapping[str, RowUpdate],
        *,
        base_id: str,
        predecessor_id: str,
        version: int,
        run_id: str,
        data_watermark: float | None = None,
        created_at: float = 0.0,
    ) -> None: ...


def is_delta(snapshot: Received) -> bool:
    return getattr(snapshot.manifest, "kind", "base") == "delta"


def order_of(snapshot: Received) -> SnapshotOrder:
    m = snapshot.manifest
    return snapshot_order(m.version, m.created_at, m.run_id)


def apply_delta(loader: DeltaLoader, snapshot: Received) -> Outcome:
    """Rule 1 for one received delta snapshot."""
    m = snapshot.manifest
    try:
        dense, rows = split_delta(snapshot.tensors)
        loader.apply_delta(
            dense,
            rows,
            base_id=m.base_id,
            predecessor_id=m.predecessor_id,
            version=m.version,
            run_id=m.run_id,
            data_watermark=m.data_watermark,
            created_at=m.created_at,
        )
    except StandbyBusy:
        return "busy"
    except SnapshotRejected as exc:
        return "gap" if exc.reason == "chain_gap" else "refused"
    except DeltaError as exc:
        log.warning("delta %s/%d refused: %s", m.run_id, m.version, exc)
        return "refused"
    return "live"


def catch_up(
    newest_first: Iterable[Received],
    loader: DeltaLoader,
    load_base: Callable[[Received], bool | None],
) -> None:
    """Rule 2. ``load_base`` loads a base: True live, False refused, None busy."""
    following: dict[str, Received] = {}  # predecessor_id -> the delta that follows it
    for snapshot in newest_first:
        if not loader.is_newer(order_of(snapshot)):
            break  # reached the live version (or older): the chain starts there
        if is_delta(snapshot):
            following.setdefault(snapshot.manifest.predecessor_id, snapshot)
            continue
        loaded = load_base(snapshot)
        if loaded is None:
            return  # busy: the watcher retries on the next gap
        if loaded:
            break
    live = loader.info
    while live is not None:
        successor = following.pop(live.snapshot_id, None)
        if successor is None or apply_delta(loader, successor) != "live":
            break
        live = loader.info
    if following:
        log.info(
            "%d delta(s) on the topic do not link to the live version %s; waiting for the "
            "next base",
            len(following),
            None if live is None else snapshot_id(live.run_id, live.version),
        )
