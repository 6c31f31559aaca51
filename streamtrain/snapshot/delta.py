"""Delta snapshots: the rows of row-sparse tensors that changed, plus every dense tensor whole.

A delta payload is an ordinary safetensors file. For each row-sparse tensor ``name`` it holds
``name`` (the changed rows' values, shape ``[k, ...]``) and ``name@rows`` (their int64 indices,
shape ``[k]``); every other tensor appears whole, as in a base. The manifest says
``kind: "delta"`` and names its ``base_id`` and ``predecessor_id`` (``docs/snapshots.md``).

Example:
    >>> import torch
    >>> payload = delta_payload({"t": torch.ones(2, 3), "b": torch.zeros(1)},
    ...                         {"t": torch.tensor([4, 9])})
    >>> sorted(payload)
    ['b', 't', 't@rows']
    >>> dense, rows = split_delta(payload)
    >>> sorted(dense), rows["t"][0].tolist()
    (['b'], [4, 9])
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

import torch

from streamtrain.snapshot.mapped import copy_released
from streamtrain.train.hooks import SnapshotRequest

ROWS_SUFFIX = "@rows"
RowUpdate = tuple[torch.Tensor, torch.Tensor]  # (int64 indices [k], values [k, ...])


class DeltaError(ValueError):
    """A delta payload whose row entries do not pair up or do not fit together."""


def delta_payload(
    tensors: Mapping[str, torch.Tensor], rows: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The tensors a delta publishes: ``tensors`` plus one ``<name>@rows`` per row entry."""
    payload = dict(tensors)
    for name, index in rows.items():
        payload[name + ROWS_SUFFIX] = index.to(torch.int64)
    return payload


def split_delta(
    tensors: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, RowUpdate]]:
    """Separate a decoded delta into whole tensors and row updates; DeltaError if malformed."""
    dense: dict[str, torch.Tensor] = {}
    rows: dict[str, RowUpdate] = {}
    for name, tensor in tensors.items():
        if name.endswith(ROWS_SUFFIX):
            target = name.removesuffix(ROWS_SUFFIX)
            values = tensors.get(target)
            if values is None:
                raise DeltaError(f"delta entry {name!r} has no values tensor {target!r}")
            if tensor.dtype != torch.int64 or tensor.dim() != 1:
                raise DeltaError(f"delta indices {name!r} must be 1-D int64, got {tensor.dtype}")
            if values.dim() < 1 or values.shape[0] != tensor.shape[0]:
                raise DeltaError(
                    f"delta {target!r}: {tensor.shape[0]} indices but values of shape "
                    f"{list(values.shape)}"
                )
            rows[target] = (tensor, values)
    for name, tensor in tensors.items():
        if not name.endswith(ROWS_SUFFIX) and name not in rows:
            dense[name] = tensor
    return dense, rows


def apply_rows(
    targets: Mapping[str, torch.Tensor],
    whole: Mapping[str, torch.Tensor],
    rows: Mapping[str, RowUpdate],
) -> None:
    """Write ``whole`` tensors and row updates into ``targets`` in place (callers: no_grad)."""
    for name, tensor in whole.items():
        copy_released(targets[name], tensor)  # a base's table, block by block (mapped.py)
    for name, (index, values) in rows.items():
        target = targets[name]
        target.index_copy_(0, index.to(target.device), values.to(target.device))


def scatter_into(
    tensors: dict[str, torch.Tensor],
    changed: Mapping[str, torch.Tensor],
    rows: Mapping[str, torch.Tensor],
) -> None:
    """Fold a request's ``changed`` tensors into the full ``tensors`` in place: those with
    ``rows`` (their int64 indices) scattered in, the others replacing the whole tensor. The
    full tensors are the sink's own copies (the merger's, the publisher's shadow)."""
    with torch.no_grad():
        for name, tensor in changed.items():
            index = rows.get(name)
            if index is None:
                tensors[name] = tensor
            else:
                tensors[name].index_copy_(0, index, tensor)


def merge_requests(older: SnapshotRequest, newer: SnapshotRequest) -> SnapshotRequest:
    """One request equivalent to publishing ``older`` then ``newer`` (``newer`` unpublished).

    1. ``newer`` is a base: it alone (it holds everything).
    2. ``older`` is a base, ``newer`` a delta: a base at ``newer``'s version — ``older``'s
       full tensors (owned by the sink, so written in place) with ``newer``'s rows scattered
       in and its whole tensors replacing ``older``'s.
    3. both deltas: the union of their rows, ``newer``'s values winning; a row ``newer`` did
       not touch kept ``older``'s value, which is still current.
    """
    if newer.rows is None:
        return newer
    if older.rows is None:
        return _base_then_rows(older, newer, newer.rows)
    older.wait_ready()
    tensors = dict(older.tensors)
    rows = dict(older.rows)
    for name, tensor in newer.tensors.items():
        index = newer.rows.get(name)
        if index is None:
            tensors[name] = tensor
            continue
        rows[name], tensors[name] = _union(rows[name], tensors[name], index, tensor)
    # A scheduled base (``complete``) absorbs the deltas around it and stays one.
    complete = older.complete or newer.complete
    return dataclasses.replace(newer, tensors=tensors, rows=rows, complete=complete)


def _base_then_rows(
    older: SnapshotRequest, newer: SnapshotRequest, rows: Mapping[str, torch.Tensor]
) -> SnapshotRequest:
    """Case 2, done when the merged request's ``wait_ready`` is called (the sink's thread):
    ``older``'s copy may still be filled in the background (``train/snapshot_copy.py``), and
    the offering thread is the training thread, which must not wait for it."""
    tensors = dict(older.tensors)
    lock = threading.Lock()
    merged = threading.Event()

    def wait_ready() -> None:
        with lock:
            if merged.is_set():
                return
            older.wait_ready()  # may raise CopySpoiled: the merged request is spoiled too
            newer.wait_ready()
            scatter_into(tensors, newer.tensors, rows)
            merged.set()

    return dataclasses.replace(
        newer, tensors=tensors, rows=None, complete=False, wait_ready=wait_ready
    )


def _union(
    old_index: torch.Tensor, old_values: torch.Tensor, index: torch.Tensor, values: torch.Tensor
) -> RowUpdate:
    both = torch.cat([old_index, index])
    unique, inverse = torch.unique(both, return_inverse=True)
    position = torch.arange(both.shape[0])
    # The last occurrence of each row wins: newer values come after older ones in ``both``.
    last = torch.full((unique.shape[0],), -1, dtype=torch.int64)
    last = last.scatter_reduce(0, inverse, position, reduce="amax")
    return unique, torch.cat([old_values, values])[last]
