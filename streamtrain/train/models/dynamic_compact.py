"""A served dynamic table's ID lookup compacted inside the arrays it already holds.

A compaction (:meth:`.dynamic_lookup.SortedLookup.replace` once the recent level is full)
copying the valid pairs out and merging them into new arrays held the old level, its valid
pairs and the merged ones at once: three times the lookup (16 bytes a row each), 0.13 x a
1 GB table above a server's steady state, the peak of a whole run
(``bench/dynamic_load_memory.py``). A server runs it inside the slot's exclusive section,
where no request reads the lookup and the old one is never read again (its ``made_from`` no
longer matches the written mapping), so it may rewrite the old level's arrays: both steps
below go piece by piece (:data:`PIECE` pairs), and the only arrays they make are a piece's.
The arrays must have room for every owned row (:meth:`.dynamic_lookup.SortedLookup.build`
makes them ``capacity`` long; pages past the used part are never touched, so not resident).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Int64s = npt.NDArray[np.int64]
PIECE = 1 << 16  # pairs a step of a pass reads at once: 1 MiB of keys and rows


def keep_valid(keys: Int64s, rows: Int64s, n: int, owners: Int64s) -> int:
    """Move the pairs of ``keys[:n]``/``rows[:n]`` the mapping still holds
    (``owners[row] == key``) to the front, in order, in place; their count. A pair only
    moves left, and a piece is copied out before it is written, so no unread pair is lost."""
    kept = 0
    for start in range(0, n, PIECE):
        end = min(n, start + PIECE)
        piece_keys, piece_rows = keys[start:end], rows[start:end]
        valid = owners[piece_rows] == piece_keys
        count = int(np.count_nonzero(valid))
        if count == end - start and kept == start:  # nothing left behind yet: nothing moves
            kept = end
            continue
        keys[kept : kept + count] = piece_keys[valid]  # the masks' results are copies
        rows[kept : kept + count] = piece_rows[valid]
        kept += count
    return kept


def merge_into(keys: Int64s, rows: Int64s, n: int, came: Int64s, came_rows: Int64s) -> int:
    """Merge ``came`` (ascending, none in ``keys[:n]``) into the ascending ``keys[:n]`` in
    place, rows alike; the arrays need room for ``n + came.size`` pairs, the new count.

    Each came pair's final place is its place among the old keys plus the came pairs before
    it; an old pair moves right by the came pairs before it. The output is written window by
    window from the right: a window's old pairs come from at or below it (copied out before
    it is written), and the windows left of it read only from below their own end."""
    count = came.size
    total = n + count
    if count == 0:
        return total
    places = keys[:n].searchsorted(came) + np.arange(count)  # ascending, distinct
    for end in range(total, 0, -PIECE):
        start = max(0, end - PIECE)
        first, last = places.searchsorted(start), places.searchsorted(end)
        if last == 0:
            break  # no came pair at or before this window: nothing below it moves
        old = np.ones(end - start, dtype=bool)
        old[places[first:last] - start] = False
        moved_keys = keys[start - first : end - last].copy()
        moved_rows = rows[start - first : end - last].copy()
        window_keys, window_rows = keys[start:end], rows[start:end]
        window_keys[old], window_rows[old] = moved_keys, moved_rows
        new = ~old
        window_keys[new], window_rows[new] = came[first:last], came_rows[first:last]
    return total


def shift_left(values: Int64s, skip: int) -> int:
    """``values[skip:]`` moved to the front in place, piece by piece (no copy of the whole);
    the count moved."""
    count = values.size - skip
    if skip:
        for start in range(0, count, PIECE):
            end = min(count, start + PIECE)
            values[start:end] = values[start + skip : end + skip]
    return count
