"""A dynamic table's ID lookup, and the checks a received mapping must pass.

The lookup holds the mapping's owned IDs sorted, with their rows, in host memory (numpy): an
ID is found by ``searchsorted``. It is derived state, never checkpointed or published: any
lookup holding the owned (ID, row) pairs answers alike, so a replay, every rank and a server
find the same rows whatever order their lookups were updated in.

It keeps two sorted levels, so a step's few new IDs never move the whole table (a merge into
one array of a million rows copied 8 MB three times, 11 ms a step):

- ``keys``/``rows``: every owned pair as of the last compaction;
- ``new_keys``/``new_rows``: the IDs admitted since, at most ``16 * sqrt(capacity)`` of them
  (16k at 1M rows); a step merges its new IDs into this small level only.

IDs that left their rows are not removed at all: a pair is believed only when the mapping
still says so (``slot_ids[row] == id``, one gather per lookup), and an ID re-admitted elsewhere
is in the recent level, which is searched first. When the recent level is full, both are
compacted into one (the valid pairs, merged: O(capacity), once per ``16 * sqrt(capacity)``
admissions). So a step costs O(batch log capacity + sqrt(capacity)) amortised.

Tables below :data:`ONE_LEVEL_BELOW` rows keep one level: each step that changes owners copies
the valid pairs with the new ones (a few thousand entries at most), and every lookup searches
once instead of twice (two of the three lookups a prequential step makes). Its pairs are all
valid (the owners are written before the copy drops the stale ones), so a lookup needs no
check against the mapping either.

- :meth:`SortedLookup.build`: sort every owned row, O(capacity log capacity); after a
  checkpoint load or a base snapshot (120 ms at 1M rows on this project's CPU machine);
- :meth:`SortedLookup.replace`: add the IDs that came to the recent level; after each training
  step that admits, and after a delta on a server.

numpy rather than torch: a step makes a few dozen operations on arrays of a batch's size,
where torch's dispatch (5-10 us an operation on CPU) cost more than the work; and the arrays'
methods (``keys.searchsorted``, ``mask.nonzero()``) rather than numpy's functions of the same
name, whose wrappers cost several times the work at that size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from streamtrain.train.models.dynamic_compact import keep_valid, merge_into, shift_left
from streamtrain.train.models.dynamic_twice import id_twice

Int64s = npt.NDArray[np.int64]
EMPTY = -(1 << 63)  # int64 min marks a free row; a raw ID equal to it is never admitted
ONE_LEVEL_BELOW = 2048  # tables of fewer rows keep one level (SortedLookup._one_level)
_NONE: Int64s = np.empty(0, dtype=np.int64)


GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64


def mix64_host(x: Int64s) -> Int64s:
    """SplitMix64's finaliser on int64 host arrays (the admission draw, the fallback rows): the
    bits of torch's int64 version (``embedding.hash_rows``, ``dynamic_table.mix64``), computed
    on a uint64 view, where products wrap around alike and shifts are logical, so no masks
    are needed and the steps run in place (9 operations where int64 took 13)."""
    z = np.asarray(x, dtype=np.int64).view(np.uint64) * _GOLDEN_U  # a new array
    z ^= z >> _S30
    z *= _MIX1_U
    z ^= z >> _S27
    z *= _MIX2_U
    z ^= z >> _S31
    out: Int64s = z.view(np.int64)
    return out


_GOLDEN_U = np.uint64(0x9E3779B97F4A7C15)  # GOLDEN as uint64
_MIX1_U, _MIX2_U = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def uniform_host(ids: Int64s, step: int, seed: int) -> npt.NDArray[np.float64]:
    """A float64 in [0, 1) per ID, a fixed function of (ID, step, seed)."""
    salt = mix64_host(np.array([step * 1_000_003 + seed]))[0]
    return ((mix64_host(ids ^ salt) >> 11) & ((1 << 53) - 1)).astype(np.float64) / float(1 << 53)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 (wrap-around products, logical shifts by masks)."""
    return torch.from_numpy(mix64_host(x.cpu().numpy()))


def uniform(ids: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """A float64 in [0, 1) per ID, a fixed function of (ID, step, seed)."""
    return torch.from_numpy(uniform_host(ids.cpu().numpy(), step, seed))


def token(slot_ids: torch.Tensor) -> tuple[int, int]:
    """What identifies the contents of ``slot_ids`` as torch last wrote them: a write from
    outside (``load_state_dict``, a served snapshot) moves the version."""
    return slot_ids.data_ptr(), slot_ids._version


def _search(keys: Int64s, rows: Int64s, ids: Int64s) -> tuple[npt.NDArray[np.bool_], Int64s]:
    n = keys.size
    if n == 0:
        return np.zeros(ids.shape, dtype=bool), np.zeros(ids.shape, dtype=np.int64)
    # array methods, not numpy's functions: a tenth of the dispatch at a batch's size
    at = keys.searchsorted(ids)
    np.minimum(at, n - 1, out=at)
    return keys[at] == ids, rows[at]


def _merge(keys: Int64s, rows: Int64s, came: Int64s, came_rows: Int64s) -> tuple[Int64s, Int64s]:
    """Sorted ``came`` (none in ``keys``) merged into sorted ``keys``, rows alike, no sort of
    ``keys``: each new key's place is its place among the old plus the new keys before it."""
    at = keys.searchsorted(came) + np.arange(came.size)
    old = np.ones(keys.size + came.size, dtype=bool)
    old[at] = False
    merged_keys = np.empty(old.size, dtype=np.int64)
    merged_rows = np.empty(old.size, dtype=np.int64)
    merged_keys[at], merged_rows[at] = came, came_rows
    merged_keys[old], merged_rows[old] = keys, rows
    return merged_keys, merged_rows


class SortedLookup(NamedTuple):
    """Owned IDs ascending with their rows, in two levels (see the module doc); replaced
    whole, never edited, so a request thread reading one sees a consistent set. ``owners``
    is the live ``slot_ids`` (numpy view), ``owned`` how many rows are owned. A named tuple:
    as immutable as a frozen dataclass, made in a third of its time (one a step)."""

    keys: Int64s
    rows: Int64s
    new_keys: Int64s
    new_rows: Int64s
    owners: Int64s
    owned: int
    made_from: tuple[int, int]
    # the capacity-long arrays ``keys`` and ``rows`` view from their start (``build``), so a
    # served lookup compacts inside them (``replace(in_place=True)``); None once a copying
    # compaction made exact-size arrays (the trainer's)
    room: tuple[Int64s, Int64s] | None = None

    @classmethod
    def build(cls, slot_ids: torch.Tensor) -> SortedLookup:
        owners = slot_ids.numpy()
        # every row sorted by owner, free rows (EMPTY, the int64 minimum) first: the owned
        # rows are what follows them, in the order a stable sort of the owned IDs alone gives
        # (ties by row), moved to the front in place. Two capacity-sized arrays at the peak
        # (the order and the keys), where selecting the owned rows first held five: a
        # server's peak while it loads a base is this sort
        order = owners.argsort(kind="stable")
        owned = shift_left(order, int(np.count_nonzero(owners == EMPTY)))
        keys = np.empty(owners.size, dtype=np.int64)  # pages past ``owned`` stay untouched
        rows = order[:owned]
        owners.take(rows, out=keys[:owned], mode="clip")  # "raise" would buffer a copy
        room = (keys, order)
        return cls(keys[:owned], rows, _NONE, _NONE, owners, owned, token(slot_ids), room)

    def find(self, ids: Int64s) -> tuple[npt.NDArray[np.bool_], Int64s]:
        """(hit mask, row where hit; an arbitrary row elsewhere) of ``ids``."""
        hit, rows = _search(self.keys, self.rows, ids)
        owners = self.owners
        if owners.size < ONE_LEVEL_BELOW:
            return hit, rows  # one level holds only valid pairs (_one_level, build)
        if self.new_keys.size:
            recent, recent_rows = _search(self.new_keys, self.new_rows, ids)
            np.putmask(rows, recent, recent_rows)  # the newer pair of a re-admitted ID
            hit |= recent
        hit &= owners[rows] == ids  # a pair the mapping no longer holds is stale
        return hit, rows

    def pairs(self) -> tuple[Int64s, Int64s]:
        """Every owned (ID, row), IDs ascending: the compacted level (tests, checks)."""
        compact = self._compacted()
        return compact.keys, compact.rows

    def replace(
        self,
        came: Int64s,
        came_rows: Int64s,
        owned: int,
        made_from: tuple[int, int],
        in_place: bool = False,
    ) -> SortedLookup:
        """The lookup after the IDs ``came`` (distinct, none owned before) took ``came_rows``
        and IDs left their rows (nothing to do: their pairs are stale now), ``owned`` rows
        owned in all. ``in_place``: a compaction may rewrite this lookup's arrays (see
        :mod:`.dynamic_compact`; only where nothing reads this lookup again)."""
        if self.owners.size < ONE_LEVEL_BELOW:
            return self._one_level(came, came_rows, owned, made_from)
        keys, rows = self.new_keys, self.new_rows
        if came.size:
            order = came.argsort()
            came, came_rows = came[order], came_rows[order]
            if keys.size:  # an ID coming again replaces its stale recent pair
                hit, _ = _search(keys, rows, came)
                if hit.any():
                    keep = np.ones(keys.size, dtype=bool)
                    keep[np.searchsorted(keys, came[hit])] = False
                    keys, rows = keys[keep], rows[keep]
            keys, rows = _merge(keys, rows, came, came_rows)
        out = SortedLookup(
            self.keys, self.rows, keys, rows, self.owners, owned, made_from, self.room
        )
        if keys.size <= recent_bound(self.owners.size):
            return out
        return out._compacted_in_place() if in_place and out.room else out._compacted()

    def refilled(
        self,
        came: Int64s,
        came_rows: Int64s,
        free_rows: Int64s,
        owned: int,
        made_from: tuple[int, int],
    ) -> SortedLookup:
        """:meth:`replace` after a training step that freed no row: ``came`` took ``came_rows``,
        of which ``free_rows`` were free and the rest owned (evicted). A one-level lookup then
        holds the owned rows before the step, and with the free ones taken those are the owned
        rows after it: one gather of their owners (the evicted rows' new ones) and one sort
        make the new level, a third of :meth:`_one_level`'s operations."""
        owners = self.owners
        if owners.size >= ONE_LEVEL_BELOW:
            return self.replace(came, came_rows, owned, made_from)
        rows = np.concatenate([self.rows, free_rows]) if free_rows.size else self.rows
        keys = owners[rows]
        order = keys.argsort(kind="stable")  # a few keys out of place: short for timsort
        return SortedLookup(keys[order], rows[order], _NONE, _NONE, owners, owned, made_from)

    def _one_level(
        self, came: Int64s, came_rows: Int64s, owned: int, made_from: tuple[int, int]
    ) -> SortedLookup:
        """A small table's :meth:`replace`: its valid pairs and the IDs that came, in one level
        (every pair valid after it: the mapping's owners are written before a replace, so the
        pairs of IDs that left are dropped here and no stale pair waits to become valid again).
        At this size the copy is cheaper than a second search in every lookup."""
        valid = self.owners[self.rows] == self.keys
        keys = np.concatenate([self.keys[valid], came])
        rows = np.concatenate([self.rows[valid], came_rows])
        order = keys.argsort(kind="stable")  # two sorted runs: a merge
        return SortedLookup(keys[order], rows[order], _NONE, _NONE, self.owners, owned, made_from)

    def _compacted(self) -> SortedLookup:
        """One level of the valid pairs: O(capacity), no sort of the table."""
        owners = self.owners
        valid = owners[self.rows] == self.keys
        keys, rows = self.keys[valid], self.rows[valid]
        if self.new_keys.size:
            fresh = owners[self.new_rows] == self.new_keys
            came, came_rows = self.new_keys[fresh], self.new_rows[fresh]
            hit, _ = _search(keys, rows, came)  # re-admitted to the row it had: one pair
            keys, rows = _merge(keys, rows, came[~hit], came_rows[~hit])
        return SortedLookup(keys, rows, _NONE, _NONE, owners, self.owned, self.made_from)

    def _compacted_in_place(self) -> SortedLookup:
        """:meth:`_compacted` inside :attr:`room` (:mod:`.dynamic_compact`): no array of the
        table's size is made, and this lookup's arrays are rewritten (no longer valid)."""
        assert self.room is not None
        keys, rows = self.room
        owners = self.owners
        kept = keep_valid(keys, rows, self.keys.size, owners)
        fresh = owners[self.new_rows] == self.new_keys
        came, came_rows = self.new_keys[fresh], self.new_rows[fresh]
        hit, _ = _search(keys[:kept], rows[:kept], came)  # re-admitted to the row it had
        total = merge_into(keys, rows, kept, came[~hit], came_rows[~hit])
        return SortedLookup(
            keys[:total], rows[:total], _NONE, _NONE, owners, self.owned, self.made_from, self.room
        )


def recent_bound(capacity: int) -> int:
    """How many pairs a two-level lookup's recent level holds before it is compacted."""
    return 16 * math.isqrt(capacity) + 64


def mapping_problem(
    lookup: SortedLookup | None,
    capacity: int,
    index: torch.Tensor | None,
    ids: torch.Tensor,
    blocks: Callable[[torch.Tensor], Iterable[torch.Tensor]] | None = None,
) -> str | None:
    """Why a received mapping may not be applied (None when it may): ``ids`` are the new
    owners of rows ``index`` of a mapping whose owners ``lookup`` holds now (a delta), or the
    whole ``slot_ids`` (``index`` None: a base; no ``lookup`` needed, checked in buckets by
    :func:`.dynamic_twice.id_twice`, read through ``blocks`` when given). Two rows may not
    own one ID, and the buffer must be int64 of the table's rows (the signature proves who
    sent it, not that it fits)."""
    if ids.dtype != torch.int64:
        return f"slot_ids are {ids.dtype}, a mapping is int64"
    size = capacity if index is None else index.shape[0]
    if tuple(ids.shape) != (size,):
        return f"slot_ids have shape {list(ids.shape)}, the table expects [{size}]"
    if index is None:
        given = id_twice(ids, EMPTY) if blocks is None else id_twice(ids, EMPTY, blocks)
        return None if given is None else f"slot_ids give ID {given} more than one row"
    new = ids.numpy()
    owned = new[new != EMPTY]
    owned.sort()  # in place (a fresh array); a sort and a comparison: np.unique makes a dozen
    ordered = owned
    twice = np.flatnonzero(ordered[1:] == ordered[:-1])
    if twice.size:
        return f"slot_ids give ID {int(ordered[twice[0]])} more than one row"
    assert lookup is not None, "a delta is checked against the mapping's lookup"
    rows = index.numpy()
    ordered_rows = np.sort(rows)
    if rows.size and np.count_nonzero(ordered_rows[1:] == ordered_rows[:-1]):
        return "slot_ids rows are listed more than once"
    # only an ID that comes to a row can be owned elsewhere (a row keeping its owner holds an
    # ID owned once already): a delta lists every row seen, a few of them with a new owner
    came = new[(new != lookup.owners[rows]) & (new != EMPTY)]
    hit, at = lookup.find(came)
    elsewhere = hit & ~np.isin(at, rows)
    if elsewhere.any():
        first = int(np.flatnonzero(elsewhere)[0])
        return f"slot_ids give ID {int(came[first])} a second row: row {int(at[first])} keeps it"
    return None


def counted_ids(ids: Int64s) -> tuple[Int64s, Int64s]:
    """The distinct IDs ascending, without EMPTY, and how often each occurs (``np.unique``
    with counts, in a third of its operations)."""
    distinct, counts, _ = count_ids(ids)
    return distinct, counts


def count_ids(ids: Int64s) -> tuple[Int64s, Int64s, bool]:
    """:func:`counted_ids`, and whether ``ids`` held EMPTY (dropped from the distinct IDs)."""
    ids = ids.copy()
    ids.sort()
    had_empty = ids.size > 0 and bool(ids[0] == EMPTY)  # sorted: EMPTY, the int64 min, first
    if had_empty:
        ids = ids[np.count_nonzero(ids == EMPTY) :]
    n = ids.size
    if n == 0:
        return ids, ids, had_empty
    # the edges of the runs of equal IDs, both ends included (the starts, then n): the counts
    # are their differences, no array to fill piecewise
    edge = np.empty(n + 1, dtype=bool)
    edge[0] = edge[n] = True
    np.not_equal(ids[1:], ids[:-1], out=edge[1:n])
    at = edge.nonzero()[0]
    return ids[at[:-1]], at[1:] - at[:-1], had_empty
