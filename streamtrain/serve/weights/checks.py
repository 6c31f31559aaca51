"""Whether a snapshot's tensors (a base's, or a delta's whole tensors and rows) fit the model.

Every check runs before the slot writes anything (``slot.py`` step 1); the first failure
raises :class:`SnapshotRejected` with the metric label as ``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from streamtrain.snapshot.delta import RowUpdate
from streamtrain.snapshot.manifest import SnapshotHeader, parse_snapshot_id
from streamtrain.snapshot.mapped import all_finite, blocks_released
from streamtrain.train.models.dynamic_lookup import mapping_problem
from streamtrain.train.models.dynamic_mappings import dynamic_mappings
from streamtrain.wire.rejects import clip_detail

_HINT = "(is the server configured for the same model?)"


# What the slot refuses for (the subscriber's own reasons are ``verify.RejectReason``).
SLOT_REASONS = ("stale", "shape_mismatch", "non_finite", "chain_gap", "bad_mapping")


class SnapshotRejected(ValueError):
    """A snapshot the slot refused; ``reason`` is the metric label, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        # clipped: a message may quote the snapshot's own tensor names (any length)
        super().__init__(clip_detail(message))
        self.reason = reason


def check_whole(
    targets: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    stale: str | None,
    *,
    finite: bool = True,
) -> None:
    """A base: every model tensor, nothing else, right shapes and kinds, finite (unless
    ``finite`` is False: a new replica's fill judged each element as it wrote it)."""
    if stale is not None:
        raise SnapshotRejected("stale", stale)
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise SnapshotRejected(
            "shape_mismatch",
            f"tensor names do not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} {_HINT}",
        )
    for name, target in targets.items():
        _fits(name, tensors[name], target, tuple(target.shape), finite)


def check_rows(
    targets: Mapping[str, torch.Tensor],
    shared: frozenset[str],
    dense: Mapping[str, torch.Tensor],
    rows: Mapping[str, RowUpdate],
    stale: str | None,
) -> None:
    """A delta: each model tensor whole or as rows (rows only on shared row-sparse tables),
    indices inside the table, values of the table's row shape, everything finite."""
    if stale is not None:
        raise SnapshotRejected("stale", stale)
    not_shared = sorted(set(rows) - shared)
    if not_shared:
        raise SnapshotRejected(
            "shape_mismatch",
            f"delta has rows for {not_shared[:5]}, which this server does not hold as "
            f"row-sparse tables {_HINT}",
        )
    check_whole(
        {n: t for n, t in targets.items() if n not in rows},
        dense,
        None,
    )
    for name, (index, values) in rows.items():
        target = targets[name]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= target.shape[0]):
            raise SnapshotRejected(
                "shape_mismatch",
                f"delta rows of {name!r} fall outside its {target.shape[0]} rows {_HINT}",
            )
        _fits(name, values, target, (index.shape[0], *target.shape[1:]))


def _fits(
    name: str,
    got: torch.Tensor,
    target: torch.Tensor,
    shape: tuple[int, ...],
    finite: bool = True,
) -> None:
    if tuple(got.shape) != shape:
        raise SnapshotRejected(
            "shape_mismatch",
            f"tensor {name!r} has shape {list(got.shape)}, the model expects {list(shape)} {_HINT}",
        )
    if got.dtype.is_floating_point != target.dtype.is_floating_point or (
        not target.dtype.is_floating_point and got.dtype != target.dtype
    ):  # integer state (counters, a mapping) is written as it is: no cast may change it
        raise SnapshotRejected(
            "shape_mismatch", f"tensor {name!r} is {got.dtype}, the model has {target.dtype}"
        )
    if finite and got.dtype.is_floating_point and not all_finite(got):
        raise SnapshotRejected("non_finite", f"tensor {name!r} holds NaN or Inf")


def check_mappings(
    model: nn.Module, whole: Mapping[str, torch.Tensor], rows: Mapping[str, RowUpdate]
) -> None:
    """A dynamic table's received mapping (whole in a base, rows in a delta) gives no ID
    two rows; shapes, dtypes and row ranges were checked before (``check_whole``/``check_rows``)."""
    for name, mapping in dynamic_mappings(model).items():
        if name in rows:
            index, ids = rows[name]
            problem = mapping_problem(mapping.lookup(), mapping.capacity, index.cpu(), ids.cpu())
        elif name in whole:
            # a base replaces every owner: no lookup of the old ones (a fresh server's would
            # be sorted here for nothing); the old lookup still serves meanwhile, so the check
            # holds a byte a row and a bucket of IDs, the mapped pages dropped behind it
            problem = mapping_problem(
                None, mapping.capacity, None, whole[name].cpu(), blocks_released
            )
        else:
            continue
        if problem is not None:
            raise SnapshotRejected("bad_mapping", f"mapping {name!r}: {problem}")


def chain_gap(live: SnapshotHeader | None, delta: SnapshotHeader) -> str | None:
    """Why ``delta`` does not apply on the ``live`` snapshot (slot rule 6), or None when it
    does.

    A delta holds every row changed since its predecessor, at its own step, and whole dense
    tensors: on any live version of the same run from its predecessor up to (not including)
    itself it leaves exactly the trainer's weights at its step. So it applies when the live
    version is its predecessor, and equally on a base the trainer published beside the deltas
    (``snapshot/publisher.py`` rule 4), whichever of the two the server reached first."""
    named = parse_snapshot_id(delta.predecessor_id or "")
    if (
        live is not None
        and delta.base_id is not None
        and named is not None
        and named[0] == delta.run_id == live.run_id
        and named[1] <= live.version < delta.version
    ):
        return None
    held = "nothing" if live is None else f"{live.snapshot_id} (base {live.lineage})"
    return (
        f"delta {delta.snapshot_id} follows {delta.predecessor_id} (base {delta.base_id}) but "
        f"the live version is {held}"
    )
