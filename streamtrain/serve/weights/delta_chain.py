"""Following a chain of delta snapshots on the server (``docs/snapshots.md``, Deltas).

1. A delta applies on a live version of its run from the snapshot it names as
   ``predecessor_id`` up to itself (``checks.chain_gap``: its predecessor, or a base published
   beside the deltas); anything else is a *gap*.
2. On a gap (a delta lost, corrupt or refused, a server that joined late, a base rotated
   out) :func:`catch_up` reads the snapshots newer than the live version in catch-up order
   (``snapshot/scan.py``: the newest base first, so a replica is ready once that one base
   is read, then the deltas after it oldest first, read forward in one pass; newest first
   when no base is newer than the live version). It loads the first base the slot accepts
   and keeps the deltas; then it applies the kept deltas that link, oldest first (one that
   does not link yet is passed over: the deltas written while a base was published precede
   it in the chain but follow it in version). A chain that breaks stops there: the server
   stays on the last version it could reach, whole and consistent, until the next base.
3. Deltas never go to the local cache: it keeps bases, and a server starting from its cache
   catches up from the topic (rule 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Literal

from streamtrain.serve.weights.checks import chain_gap
from streamtrain.serve.weights.loader import SnapshotLoader
from streamtrain.serve.weights.slot import SnapshotRejected, StandbyBusy
from streamtrain.snapshot.delta import DeltaError, split_delta
from streamtrain.snapshot.verify import ReceivedSnapshot

log = logging.getLogger(__name__)
Outcome = Literal["live", "refused", "gap", "busy"]


def is_delta(snapshot: ReceivedSnapshot) -> bool:
    return snapshot.manifest.kind == "delta"


def apply_delta(loader: SnapshotLoader, snapshot: ReceivedSnapshot) -> Outcome:
    """Rule 1 for one received delta snapshot."""
    m = snapshot.manifest
    try:
        dense, rows = split_delta(snapshot.tensors)
        loader.apply_delta(dense, rows, m.header)
    except StandbyBusy:
        return "busy"
    except SnapshotRejected as exc:
        return "gap" if exc.reason == "chain_gap" else "refused"
    except DeltaError as exc:
        log.warning("delta %s/%d refused: %s", m.run_id, m.version, exc)
        return "refused"
    return "live"


def catch_up(
    snapshots: Iterable[ReceivedSnapshot],
    loader: SnapshotLoader,
    load_base: Callable[[ReceivedSnapshot], bool | None],
) -> None:
    """Rule 2 for ``snapshots`` in catch-up order (or newest first: any order does).
    ``load_base`` loads a base: True live, False refused, None busy."""
    kept: list[ReceivedSnapshot] = []  # deltas newer than the live version
    for snapshot in snapshots:
        if not loader.is_newer(snapshot.manifest.order):
            continue  # the live version has it (the source reads no more of these)
        if is_delta(snapshot):
            kept.append(snapshot)
            continue
        if load_base(snapshot) is None:
            return  # busy: the watcher retries on the next gap
    left = 0
    for delta in sorted(kept, key=lambda d: d.manifest.order):
        live = loader.info
        if not loader.is_newer(delta.manifest.order):
            continue  # the base loaded covers it
        if live is None or chain_gap(live.header, delta.manifest.header) is not None:
            left += 1
            continue
        if apply_delta(loader, delta) != "live":
            break
    if left:
        live = loader.info
        log.info(
            "%d delta(s) on the topic do not link to the live version %s; waiting for the "
            "next base",
            left,
            None if live is None else live.snapshot_id,
        )
