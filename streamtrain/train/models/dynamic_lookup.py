"""A dynamic table's ID lookup, and the checks a received mapping must pass.

The lookup is the mapping's owned IDs sorted, with their rows, in host memory (numpy): an ID
is found by one ``searchsorted``. It is derived state, never checkpointed or published: any
lookup holding exactly the owned (ID, row) pairs answers alike, so a replay, every rank and a
server find the same rows whatever order their lookups were updated in.

It follows the mapping two ways:

- :meth:`SortedLookup.build`: sort every owned row, O(capacity log capacity); after a
  checkpoint load or a base snapshot (120 ms at 1M rows on this project's CPU machine);
- :meth:`SortedLookup.replace`: drop the IDs that left the changed rows, merge in the ones
  that came, O(changes log capacity) to find the places plus a few O(capacity) copies (memory
  moves rather than a sort); after each training step that admits or evicts, and after a
  delta on a server.

numpy rather than torch: a step makes a few dozen operations on arrays of a batch's size,
where torch's dispatch (5-10 us an operation on CPU) cost more than the work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

Int64s = npt.NDArray[np.int64]
EMPTY = -(1 << 63)  # int64 min marks a free row; a raw ID equal to it is never admitted


def token(slot_ids: torch.Tensor) -> tuple[int, int]:
    """What identifies the contents of ``slot_ids`` as torch last wrote them: a write from
    outside (``load_state_dict``, a served snapshot) moves the version."""
    return slot_ids.data_ptr(), slot_ids._version


@dataclass(frozen=True)
class SortedLookup:
    """Owned IDs ascending (``keys``) and the row of each (``rows``); replaced whole, never
    edited, so a request thread reading one sees a consistent pair."""

    keys: Int64s
    rows: Int64s
    made_from: tuple[int, int]

    @classmethod
    def build(cls, slot_ids: torch.Tensor) -> SortedLookup:
        owners = slot_ids.numpy()
        rows = np.flatnonzero(owners != EMPTY)
        keys = owners[rows]
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], rows[order], token(slot_ids))

    def find(self, ids: Int64s) -> tuple[npt.NDArray[np.bool_], Int64s]:
        """(hit mask, row where hit; an arbitrary owned row elsewhere) of ``ids``."""
        n = self.keys.size
        if n == 0:
            return np.zeros(ids.shape, dtype=bool), np.zeros(ids.shape, dtype=np.int64)
        at = np.searchsorted(self.keys, ids)
        np.minimum(at, n - 1, out=at)
        return self.keys[at] == ids, self.rows[at]

    def replace(
        self, gone: Int64s, came: Int64s, came_rows: Int64s, made_from: tuple[int, int]
    ) -> SortedLookup:
        """The lookup after the owned IDs ``gone`` (each owned now) left their rows and
        ``came`` (none owned after ``gone`` left) took ``came_rows``."""
        keys, rows = self.keys, self.rows
        if gone.size:
            keep = np.ones(keys.size, dtype=bool)
            keep[np.searchsorted(keys, gone)] = False
            keys, rows = keys[keep], rows[keep]
        if came.size:
            order = np.argsort(came, kind="stable")
            # each new key's place in the merged array: its place among the old keys plus
            # the new keys before it (a merge of two sorted arrays, no sort of the table)
            at = np.searchsorted(keys, came[order]) + np.arange(came.size)
            old = np.ones(keys.size + came.size, dtype=bool)
            old[at] = False
            merged_keys = np.empty(old.size, dtype=np.int64)
            merged_rows = np.empty(old.size, dtype=np.int64)
            merged_keys[at], merged_rows[at] = came[order], came_rows[order]
            merged_keys[old], merged_rows[old] = keys, rows
            keys, rows = merged_keys, merged_rows
        return SortedLookup(keys, rows, made_from)


def mapping_problem(
    lookup: SortedLookup, capacity: int, index: torch.Tensor | None, ids: torch.Tensor
) -> str | None:
    """Why a received mapping may not be applied (None when it may): ``ids`` are the new
    owners of rows ``index`` of a mapping whose owners ``lookup`` holds now (a delta), or the
    whole ``slot_ids`` (``index`` None: a base). Two rows may not own one ID, and the buffer
    must be int64 of the table's rows (the signature proves who sent it, not that it fits)."""
    if ids.dtype != torch.int64:
        return f"slot_ids are {ids.dtype}, a mapping is int64"
    size = capacity if index is None else index.shape[0]
    if tuple(ids.shape) != (size,):
        return f"slot_ids have shape {list(ids.shape)}, the table expects [{size}]"
    new = ids.numpy()
    owned = new[new != EMPTY]
    unique, counts = np.unique(owned, return_counts=True)
    if unique.size != owned.size:
        return f"slot_ids give ID {int(unique[counts > 1][0])} more than one row"
    if index is None:
        return None
    rows = index.numpy()
    hit, at = lookup.find(unique)
    if rows.size and np.unique(rows).size != rows.size:
        return "slot_ids rows are listed more than once"
    elsewhere = hit & ~np.isin(at, rows)
    if elsewhere.any():
        first = int(np.flatnonzero(elsewhere)[0])
        return f"slot_ids give ID {int(unique[first])} a second row: row {int(at[first])} keeps it"
    return None
