"""Which rows a dynamic table hands out next, found without scanning the table.

The rules are :mod:`.dynamic_table`'s: free rows lowest first; then the least recently used
rows (LRU: smallest ``(last_seen, row)``) or the least used (LFU: smallest ``(use_count,
last_seen, row)``), among owned rows not seen in this step; expiry frees the owned rows whose
``last_seen`` is older than ``step - expire_after_steps``. A scan of the whole table per step
costs O(capacity) (15 ms a step at 1M rows, 100 ms with LFU's ties); these structures answer
in O(batch log capacity) amortised:

- :class:`FreeRows`: the free rows ascending; taken from the front, expired rows merged in;
- :class:`RecencyQueue`: ``(stamp, row)`` appended each step for every row stamped in it (rows
  ascending), so the queue is ordered by ``(last_seen, row)``; LRU victims and expired rows
  pop from its front. Entries are never updated: one whose row has since been stamped again,
  or freed, is stale (``last_seen[row] != stamp`` or the row is empty) and is skipped when met
  (lazy deletion); a compaction drops the stale ones when the buffer fills;
- :class:`FrequencyRuns`: the same entries with their use counts, in sorted runs of
  geometrically growing sizes (a log-structured merge: each step's entries are one run, runs
  of similar size are merged, dropping stale entries); the LFU victims are the smallest valid
  keys across the runs' fronts (about log2(capacity / batch) runs). Below :data:`SCAN_BELOW`
  rows, :class:`FrequencyScan` chooses them by one pass over the table instead: at that size
  the pass is fewer operations than the runs' upkeep (the churn bench's 711-row tables);
  :class:`RecencyScan` does the same for LRU victims there, unless the table expires rows
  (expiry pops the recency queue, which then also gives the LRU victims).

An entry's validity is one comparison: every write of ``last_seen`` (a hit, a placement)
appends an entry with the new stamp, stamps only grow, and a row's new owner gets a later
stamp than its old one, so exactly one entry per owned row is valid.

All of it is derived state: never checkpointed, never published. After the buffers were written
from outside (a checkpoint load, a restart), it is rebuilt from ``slot_ids``, ``last_seen``
and ``use_count`` alone (:class:`Placement`, one sort of the owned rows), which orders the
valid entries exactly as a run that never stopped, so a replay decides alike.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from streamtrain.train.models.dynamic_lookup import EMPTY, Int64s

_NO_ROWS: Int64s = np.empty(0, dtype=np.int64)
_BIG = (1 << 63) - 1
SCAN_BELOW = 4096  # LFU tables of fewer rows choose victims by a scan (FrequencyScan)


def _merge_sorted(a: Int64s, b: Int64s) -> Int64s:
    """Two ascending arrays of distinct values merged, without a sort of ``a``."""
    if a.size == 0:
        return b
    at = a.searchsorted(b) + np.arange(b.size)
    out = np.empty(a.size + b.size, dtype=np.int64)
    old = np.ones(out.size, dtype=bool)
    old[at] = False
    out[at] = b
    out[old] = a
    return out


class FreeRows:
    """Free rows, ascending (an array and the index of its first row not yet taken)."""

    def __init__(self, rows: Int64s) -> None:
        self._rows = rows
        self._head = 0

    @property
    def size(self) -> int:
        return self._rows.size - self._head

    def take(self, n: int) -> Int64s:
        """The ``n`` lowest free rows (fewer when fewer are free), no longer free."""
        out = self._rows[self._head : self._head + n]
        self._head += out.size
        return out

    def add(self, rows: Int64s) -> None:
        """Rows just freed (expired). O(free rows): only while both are waiting."""
        self._rows = _merge_sorted(self._rows[self._head :], np.sort(rows))
        self._head = 0


class RecencyQueue:
    """``(stamp, row)`` entries ordered by ``(stamp, row)``; see the module doc."""

    def __init__(self, owners: Int64s, last_seen: Int64s, rows: Int64s) -> None:
        """``rows``: owned rows in ``(last_seen, row)`` order (a rebuild)."""
        self._owners, self._last_seen = owners, last_seen
        size = max(1024, 2 * rows.size)
        self._stamps = np.empty(size, dtype=np.int64)
        self._rows = np.empty(size, dtype=np.int64)
        self._head, self._tail = 0, rows.size
        self._stamps[: rows.size] = last_seen[rows]
        self._rows[: rows.size] = rows

    def __len__(self) -> int:
        return self._tail - self._head

    def push(self, stamp: int, rows: Int64s) -> None:
        """Rows (ascending, distinct) stamped ``stamp``, later than every stamp queued."""
        if self._tail + rows.size > self._stamps.size:
            self._compact(rows.size)
        end = self._tail + rows.size
        self._stamps[self._tail : end] = stamp
        self._rows[self._tail : end] = rows
        self._tail = end

    def _compact(self, room: int) -> None:
        """Keep the valid entries, in a buffer twice their number plus ``room``: at least as
        many pushes as entries kept go by before the next compaction (amortised O(1))."""
        stamps, rows = self._stamps[self._head : self._tail], self._rows[self._head : self._tail]
        valid = (self._owners[rows] != EMPTY) & (self._last_seen[rows] == stamps)
        stamps, rows = stamps[valid], rows[valid]
        size = max(1024, 2 * (stamps.size + room))
        self._stamps = np.empty(size, dtype=np.int64)
        self._rows = np.empty(size, dtype=np.int64)
        self._stamps[: stamps.size] = stamps
        self._rows[: rows.size] = rows
        self._head, self._tail = 0, stamps.size

    def pop(self, before: int, limit: int) -> Int64s:
        """Up to ``limit`` owned rows last stamped before ``before``, oldest first (ties: lowest
        row), no longer queued: the caller frees them."""
        found: list[Int64s] = []
        need = limit
        width = max(2 * limit, 256)
        while need > 0 and self._head < self._tail:
            lo = self._head
            stamps = self._stamps[lo : min(self._tail, lo + width)]
            end = int(stamps.searchsorted(before))  # stamps ascend: older ones first
            rows = self._rows[lo : lo + end]
            valid = (
                (self._owners[rows] != EMPTY) & (self._last_seen[rows] == stamps[:end])
            ).nonzero()[0]
            if valid.size >= need:
                found.append(rows[valid[:need]])
                self._head = lo + int(valid[need - 1]) + 1
                break
            found.append(rows[valid])
            need -= valid.size
            self._head = lo + end
            if end < stamps.size:  # met an entry stamped too late: none after it qualifies
                break
            width *= 2
        if len(found) == 1:
            return found[0]
        return np.concatenate(found) if found else _NO_ROWS


class FrequencyRuns:
    """``(count, stamp, row)`` entries in runs sorted by that key; see the module doc."""

    def __init__(self, owners: Int64s, last_seen: Int64s, use_count: Int64s, rows: Int64s) -> None:
        self._owners, self._last_seen, self._use_count = owners, last_seen, use_count
        # each run: counts, stamps, rows (sorted by that key) and the index of its first
        # entry not known to be stale or taken
        self._runs: list[tuple[Int64s, Int64s, Int64s, list[int]]] = []
        if rows.size:
            self._runs.append(self._sorted(use_count[rows], last_seen[rows], rows))

    @staticmethod
    def _sorted(
        counts: Int64s, stamps: Int64s, rows: Int64s
    ) -> tuple[Int64s, Int64s, Int64s, list[int]]:
        order = np.lexsort((rows, stamps, counts))
        return counts[order], stamps[order], rows[order], [0]

    def _valid(self, stamps: Int64s, rows: Int64s) -> npt.NDArray[np.bool_]:
        valid: npt.NDArray[np.bool_] = (self._owners[rows] != EMPTY) & (
            self._last_seen[rows] == stamps
        )
        return valid

    def push(self, stamp: int, rows: Int64s) -> None:
        """Rows (distinct) stamped ``stamp``; their counts are read now (final for the step)."""
        if rows.size == 0:
            return
        order = np.lexsort((rows, self._use_count[rows]))
        rows = rows[order]
        stamps = np.full(rows.size, stamp, dtype=np.int64)
        self._runs.append((self._use_count[rows], stamps, rows, [0]))
        # merge while the run below is not twice as large: sizes halve run by run, so there
        # are about log2(entries) runs and each entry is merged about that many times
        while len(self._runs) > 1 and _live(self._runs[-2]) <= 2 * _live(self._runs[-1]):
            top, below = self._runs.pop(), self._runs.pop()
            parts = [
                (c[h[0] :], s[h[0] :], r[h[0] :]) for c, s, r, h in (below, top) if c.size > h[0]
            ]
            counts = np.concatenate([p[0] for p in parts])
            stamps = np.concatenate([p[1] for p in parts])
            rows = np.concatenate([p[2] for p in parts])
            keep = self._valid(stamps, rows)
            self._runs.append(self._sorted(counts[keep], stamps[keep], rows[keep]))

    def pop(self, limit: int, step: int) -> Int64s:
        """Up to ``limit`` owned rows with the smallest keys, in the documented order: the ones
        below the last one's count by row, then its ties by key (called before this step's
        push: every valid entry is of a row not seen in this step)."""
        heads: list[tuple[Int64s, Int64s, Int64s]] = []
        for counts, stamps, rows, head in self._runs:
            found = self._front(counts, stamps, rows, head, limit)
            if found[0].size:
                heads.append(found)
        if not heads:
            return _NO_ROWS
        counts = np.concatenate([h[0] for h in heads])
        stamps = np.concatenate([h[1] for h in heads])
        rows = np.concatenate([h[2] for h in heads])
        order = np.lexsort((rows, stamps, counts))[:limit]
        counts, rows = counts[order], rows[order]
        threshold = counts[-1]
        below = np.sort(rows[counts < threshold])
        return np.concatenate([below, rows[counts == threshold]])

    def _front(
        self, counts: Int64s, stamps: Int64s, rows: Int64s, head: list[int], limit: int
    ) -> tuple[Int64s, Int64s, Int64s]:
        """The run's first ``limit`` valid entries; moves its head
        past the stale entries in front (the ones returned stay: the caller may not take
        them, and a taken one is stale at the next look)."""
        width = max(2 * limit, 64)
        while True:
            lo = head[0]
            hi = min(counts.size, lo + width)
            hits = self._valid(stamps[lo:hi], rows[lo:hi]).nonzero()[0]
            if hits.size >= limit or hi == counts.size:
                if hits.size:
                    head[0] = lo + int(hits[0])
                else:
                    head[0] = hi
                at = lo + hits[:limit]
                return counts[at], stamps[at], rows[at]
            width *= 2


class FrequencyScan:
    """LFU victims by one pass over a small table: below :data:`SCAN_BELOW` rows the scan is
    fewer numpy operations than the runs' upkeep (a step's cost there is the operations'
    dispatch, not their length). Same order as :meth:`FrequencyRuns.pop`."""

    def __init__(self, owners: Int64s, last_seen: Int64s, use_count: Int64s) -> None:
        self._owners, self._last_seen, self._use_count = owners, last_seen, use_count
        self._row_index = np.arange(owners.size, dtype=np.int64)
        self._rows = np.int64(owners.size)  # a numpy scalar: no Python int converted per step

    def push(self, stamp: int, rows: Int64s) -> None:
        """Nothing to keep: the buffers are the state."""

    def pop(
        self, limit: int, step: int, taken: Int64s | None = None, count: int | None = None
    ) -> Int64s:
        """``taken``, ``count``: see :meth:`Placement.victims` (None: found here)."""
        last_seen = self._last_seen
        evictable = _evictable(self._owners, last_seen, step, taken)
        m = min(limit, int(np.count_nonzero(evictable)) if count is None else count)
        if m == 0:
            return _NO_ROWS
        uses = np.where(evictable, self._use_count, _BIG)
        ordered = uses.copy()  # array methods: numpy's functions cost more at this size
        ordered.partition(m - 1)
        threshold = ordered[m - 1]
        below = (uses < threshold).nonzero()[0]
        recency = last_seen * self._rows + self._row_index  # unique keys: ties end alike
        tied = np.where(uses == threshold, recency, _BIG)
        k = m - below.size
        part = tied.argpartition(k - 1)[:k]
        return np.concatenate([below, part[tied[part].argsort()]])


class RecencyScan:
    """LRU victims by one pass over a small table, as :class:`FrequencyScan` for LFU: below
    :data:`SCAN_BELOW` rows the pass is fewer operations than keeping the recency queue
    (a sort and a push of every row stamped, each step). Same order as
    :meth:`RecencyQueue.pop`: smallest ``(last_seen, row)`` first."""

    def __init__(self, owners: Int64s, last_seen: Int64s) -> None:
        self._owners, self._last_seen = owners, last_seen
        self._row_index = np.arange(owners.size, dtype=np.int64)
        self._rows = np.int64(owners.size)  # a numpy scalar: no Python int converted per step

    def pop(
        self, limit: int, step: int, taken: Int64s | None = None, count: int | None = None
    ) -> Int64s:
        """``taken``, ``count``: see :meth:`Placement.victims` (None: found here)."""
        n = self._owners.size
        # unique keys in (last_seen, row) order (last_seen * rows stays far below 2**63); a row
        # stamped in this step has a key of at least step * n, above every evictable row's, so
        # only the empty rows need a mask
        keys = self._last_seen * self._rows
        keys += self._row_index
        if taken is None:
            keys[self._owners == EMPTY] = _BIG
        elif taken.size:
            keys[taken] = _BIG
        if count is None:
            count = int(np.count_nonzero(keys < step * n))
        m = min(limit, count)
        if m == 0:
            return _NO_ROWS
        part = keys.argpartition(m - 1)[:m]
        return part[keys[part].argsort()]


def _evictable(
    owners: Int64s, last_seen: Int64s, step: int, taken: Int64s | None
) -> npt.NDArray[np.bool_]:
    """Owned rows not stamped in ``step`` (``taken``: see :meth:`Placement.victims`)."""
    evictable: npt.NDArray[np.bool_] = last_seen < step
    if taken is None:
        evictable &= owners != EMPTY
        return evictable
    if taken.size:
        evictable[taken] = False
    return evictable


def _live(run: tuple[Int64s, Int64s, Int64s, list[int]]) -> int:
    return run[0].size - run[3][0]


class Placement:
    """The free rows and the victim orders of one table (see the module doc)."""

    def __init__(
        self, owners: Int64s, last_seen: Int64s, use_count: Int64s, evict: str, expire: bool
    ) -> None:
        """Built from the buffers (the numpy views it keeps reading): one sort of the owned
        rows by ``(last_seen, row)``. The recency queue is kept for expiry, and for LRU
        victims at :data:`SCAN_BELOW` rows and more (below, a scan chooses them, as for LFU);
        the frequency runs for LFU victims at that size and more."""
        self.free = FreeRows(np.flatnonzero(owners == EMPTY))
        owned = np.flatnonzero(owners != EMPTY)
        small = owners.size < SCAN_BELOW
        self.recency: RecencyQueue | None = None
        if expire or (evict == "lru" and not small):
            by_recency = owned[np.argsort(last_seen[owned], kind="stable")]
            self.recency = RecencyQueue(owners, last_seen, by_recency)
        self._frequency: FrequencyRuns | FrequencyScan | None = None
        if evict == "lfu" and small:
            self._frequency = FrequencyScan(owners, last_seen, use_count)
        elif evict == "lfu":
            self._frequency = FrequencyRuns(owners, last_seen, use_count, owned)
        self._victims: RecencyQueue | RecencyScan | FrequencyRuns | FrequencyScan
        if self._frequency is not None:
            self._victims = self._frequency
        elif self.recency is not None:  # (not by truth: an empty queue has length 0)
            self._victims = self.recency
        else:
            self._victims = RecencyScan(owners, last_seen)

    def victims(
        self, limit: int, step: int, taken: Int64s | None = None, count: int | None = None
    ) -> Int64s:
        """Up to ``limit`` owned rows not seen in ``step`` to evict, in the documented order.
        ``taken``: the free rows this step has just taken, when the caller knows the free
        list is now empty; then they are the table's only empty rows (a table without
        expiry frees no row: its empty rows are the free list), which spares the scans a
        pass over ``slot_ids``. None: the scans look for the empty rows themselves.
        ``count``: how many owned rows were not seen in ``step``, when the caller knows it
        (the rows owned before the step less those it saw, in a table that frees none): the
        scans then need not count them."""
        victims = self._victims
        if isinstance(victims, RecencyQueue):
            return victims.pop(step, limit)  # every stamp queued is before step
        if isinstance(victims, FrequencyRuns):
            return victims.pop(limit, step)
        if self.recency is not None:  # a table that expires rows: the scans find its empty
            return victims.pop(limit, step)  # rows and count its evictable ones themselves
        return victims.pop(limit, step, taken, count)

    def stamped(self, step: int, rows: Int64s) -> None:
        """Rows (distinct) whose ``last_seen`` became ``step``."""
        if self.recency is not None:
            self.recency.push(step, np.sort(rows))  # the queue's order: (stamp, row)
        if self._frequency is not None:
            self._frequency.push(step, rows)
