"""A dynamic table's mapping: each admitted raw ID owns one physical row of a fixed capacity.

The mapping is model state, in int64 buffers, so checkpoints, base snapshots and the serving
slot carry it with no protocol of their own:

- ``slot_ids[capacity]``: the raw ID owning each row, or :data:`EMPTY`;
- ``last_seen[capacity]``: the table step an owner was last in a batch (LRU, expiry);
- ``use_count[capacity]``: its occurrences since admission (LFU);
- ``filter_counts[cells]`` (only with ``admit_after > 1``): the admission filter, saturating
  counters indexed by a hash of the raw ID, as Monolith's ``hash_filter`` (bounded memory:
  IDs that share a cell share a count, so a rare ID can be admitted early, never late);
- ``step``: how many training steps the table has observed.

Every decision is a function of the observed IDs and ``step`` alone (no wall clock, no
unseeded random numbers: the admission draw is a hash of (ID, step, seed)), so a replay after
``kill -9`` and every rank of a distributed trainer (which observe the union batch) decide
alike. :meth:`DynamicMapping.observe` runs once per training step, before the forward:

1. IDs already owning a row: ``last_seen = step``, ``use_count += occurrences``.
2. Expiry: rows whose owner was unseen for more than ``expire_after_steps`` steps are freed.
3. Admission: a new ID adds its occurrences to its filter cell and passes at
   ``admit_after``; then, with ``admit_probability < 1``, a draw per step admits it.
4. Placement: free rows first (lowest index); when none are left, the least recently used
   (LRU) or least used (LFU, ties: least recent) rows not seen in this step are evicted;
   ties end on the lowest row. IDs beyond that are refused (``full``) and read the fallback.
   An admitted ID's filter cell is cleared: after eviction it earns admission again.

Decisions and lookups run in host memory on numpy views of the buffers (they stay on the CPU
when the model moves to a GPU, as Monolith's hash tables): a step makes a few dozen operations
on arrays of a batch's size, where torch's dispatch cost more than the work. The ID lookup
(:mod:`.dynamic_lookup`), free rows and victim orders (:mod:`.dynamic_victims`) are derived
state, rebuilt from the buffers alone after a write from outside (a checkpoint load, a base),
so a restored trainer decides as one that never stopped. Nothing scans the table per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from streamtrain.train.models.dynamic_lookup import (
    EMPTY,
    GOLDEN,
    Int64s,
    SortedLookup,
    count_ids,
    mix64,
    mix64_host,
    token,
    uniform,
    uniform_host,
)
from streamtrain.train.models.dynamic_observed import NO_ROWS as _NO_ROWS
from streamtrain.train.models.dynamic_observed import Observed
from streamtrain.train.models.dynamic_victims import Placement
from streamtrain.train.models.dynamic_watch import CELLS, OWNERS, SLOTS, STAMPS, Watch
from streamtrain.train.models.sparse_params import TableSettings

__all__ = ["EMPTY", "DynamicMapping", "Observed", "mix64", "uniform"]


class DynamicMapping(nn.Module):
    """Raw ID -> row of one dynamic table; see the module doc.

    >>> from streamtrain.train.models.sparse_params import TableSettings
    >>> m = DynamicMapping(TableSettings(kind="dynamic", capacity=2, fallback_rows=1))
    >>> _ = m.observe(torch.tensor([7, 9, 7]))
    >>> m.rows(torch.tensor([9, 7, 5])).tolist()  # 5 was never seen: the fallback row 2
    [1, 0, 2]
    """

    slot_ids: torch.Tensor
    last_seen: torch.Tensor
    use_count: torch.Tensor
    filter_counts: torch.Tensor
    step: torch.Tensor

    def __init__(self, settings: TableSettings) -> None:
        super().__init__()
        self.settings = settings
        self.capacity = settings.capacity
        cap = settings.capacity
        self.register_buffer("slot_ids", torch.full((cap,), EMPTY, dtype=torch.int64))
        self.register_buffer("last_seen", torch.zeros(cap, dtype=torch.int64))
        self.register_buffer("use_count", torch.zeros(cap, dtype=torch.int64))
        if settings.cells:
            self.register_buffer("filter_counts", torch.zeros(settings.cells, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._seed_mix = mix64_host(np.array([settings.seed]))[0]  # numpy scalars: no
        # conversion of a Python int per operation (see _cells, _admit)
        self._scalars = np.int64(settings.cells), np.int64(settings.admit_after)
        self._lookup: SortedLookup | None = None  # see _sorted
        # derived with the lookup, dropped when it is rebuilt (the buffers were written from
        # outside): numpy views of the buffers, and the free rows and victim orders
        self._views = _Views.of(self)
        self._placement: Placement | None = None
        self._answer: _Answer | None = None  # the last step's rows (see rows)
        self.watch = Watch()  # names the rows observe writes, first (.dynamic_watch)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _DERIVED:  # written every step: no parameter, buffer or module bookkeeping
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        """The mapping stays in host memory whatever device or dtype the model moves to
        (see the module doc); its users move the rows it returns."""
        return self

    @property
    def row_sparse_buffers(self) -> list[str]:
        """Buffers whose changes a delta carries as rows (``train/row_tracker.py``)."""
        names = ["slot_ids", "last_seen", "use_count"]
        return [*names, "filter_counts"] if self.settings.cells else names

    @property
    def occupied(self) -> int:
        return self._sorted().owned

    # --- lookup ---------------------------------------------------------------------------
    def _sorted(self) -> SortedLookup:
        """The lookup; rebuilt when the buffer was written from outside. One attribute,
        replaced whole: serving threads racing to rebuild each read a consistent one."""
        cached = self._lookup
        if cached is not None and cached.made_from == token(self._slot_ids()):
            return cached
        return self.rebuild()

    def _slot_ids(self) -> torch.Tensor:
        """``self.slot_ids`` read from the buffers' dict: the attribute goes through
        ``nn.Module.__getattr__`` (a microsecond, read three times a step)."""
        return self._buffers["slot_ids"]  # type: ignore[return-value]

    def lookup(self) -> SortedLookup:
        """The owned IDs sorted with their rows, current (the server checks deltas by it)."""
        return self._sorted()

    def rebuild(self) -> SortedLookup:
        """Sort the owned rows by raw ID (after a checkpoint load or a base); the free rows and
        victim orders are rebuilt at the next step from the buffers alone."""
        self._views = _Views.of(self)
        self._placement = None
        self._lookup = SortedLookup.build(self.slot_ids)
        return self._lookup

    def refresh(self, rows: torch.Tensor, before: torch.Tensor) -> None:
        """Update the lookup after rows ``rows`` of ``slot_ids``, owned by ``before`` until
        then, were written from outside: a delta, in the slot's exclusive section, where no
        request reads the lookup (nor the old one ever again: a compaction is in place)."""
        cached = self._lookup
        if cached is None:
            self.rebuild()
            return
        old, new = before.numpy(), self.slot_ids.numpy()[rows.numpy()]
        moved = (new != old) & (new != EMPTY)  # IDs that came to these rows
        owned = cached.owned + int(np.count_nonzero(new != EMPTY) - np.count_nonzero(old != EMPTY))
        made_from = token(self.slot_ids)  # a failed compaction leaves a lookup rebuilt on use
        self._lookup = cached.replace(new[moved], rows.numpy()[moved], owned, made_from, True)

    def forget_lookup(self) -> None:
        """Drop the lookup (a base is written: its rebuild holds no old one beside it)."""
        self._lookup = self._answer = None

    def share_lookup(self, other: DynamicMapping) -> None:
        """Take ``other``'s lookup: both read one ``slot_ids`` tensor (the serving slot's two
        copies), so its pairs are this mapping's too. A lookup is never edited, only
        replaced, so one object serves both; the derived state is dropped as by a rebuild."""
        if other.slot_ids is not self.slot_ids:
            raise ValueError("share_lookup: the mappings read different slot_ids")
        self._views = _Views.of(self)
        self._placement = None
        self._lookup = other._sorted()

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The physical row of each ID: its own, or ``capacity + hash % fallback_rows``."""
        on_host = ids.is_cpu  # no .cpu() / .to() dispatch for host tensors
        raw = ids.numpy() if on_host else ids.cpu().numpy()
        answer = self._answer
        if answer is not None and answer.answers(ids, self):
            # the IDs this step observed (the training forward, twice with an evaluation
            # pass): their rows were settled by observe; one search among the distinct IDs
            found = torch.from_numpy(answer.rows[answer.distinct.searchsorted(raw)])
        else:
            hit, rows = self._sorted().find(raw)  # rows: a new array, written here
            np.putmask(rows, ~hit, self._fallback(raw))  # copyto(where=) at half its cost
            found = torch.from_numpy(rows)
        return found if on_host else found.to(ids.device)

    def _fallback(self, raw: Int64s) -> Int64s | int:
        if self.settings.fallback_rows == 1:  # one shared row: no hash to compute
            return self.capacity
        return self.capacity + np.remainder(mix64_host(raw), self.settings.fallback_rows)

    def _remember(self, ids: torch.Tensor, had_empty: bool, distinct: Int64s, rows: Int64s) -> None:
        """Keep the rows ``observe`` settled (``distinct[i]`` reads ``rows[i]``); a batch
        holding EMPTY, no distinct ID (count_ids drops it), is left to the lookup."""
        self._answer = None if had_empty else _Answer(ids, self._lookup, distinct, rows)

    # --- decisions ------------------------------------------------------------------------
    # Written for few numpy operations per step rather than few lines: at a batch's size each
    # operation costs about its dispatch, so e.g. the unique IDs come from one sort and a mask
    # (``np.unique`` makes a dozen), and no array is made only to be overwritten.
    def _placed(self, views: _Views) -> Placement:
        """Free rows and victim orders (:mod:`.dynamic_victims`), built from the buffers after
        a rebuild of the lookup (a checkpoint load: their versions moved)."""
        placement = self._placement
        if placement is None:
            s = self.settings
            placement = self._placement = Placement(
                views.slot_ids,
                views.last_seen,
                views.use_count,
                evict=s.evict,
                expire=bool(s.expire_after_steps),
            )
        return placement

    def observe(self, ids: torch.Tensor) -> Observed:
        """One training step's decisions for the IDs of its (union) batch; see the module doc."""
        lookup = self._sorted()  # before any write: a load since the last step rebuilds them
        views = self._views
        placement = self._placed(views)
        step = int(views.step) + 1
        views.step[()] = step
        raw = ids.numpy() if ids.is_cpu else ids.cpu().numpy()
        distinct, occurrences, had_empty = count_ids(raw)
        hit, found = lookup.find(distinct)
        seen = found[hit]  # distinct IDs own distinct rows
        self.watch(STAMPS, seen)
        last_seen, use_count = views.last_seen, views.use_count
        last_seen[seen] = step
        use_count[seen] += occurrences[hit]
        out = Observed(seen, step)
        expired = self._expire(step, placement, out) if self.settings.expire_after_steps else None
        if expired is None and seen.size == distinct.size:
            placement.stamped(step, seen)
            out.owned = lookup.owned
            self._remember(ids, had_empty, distinct, found)
            return out  # nothing new: the mapping and its lookup stand
        # found[i] becomes the row distinct[i] reads this step: its own (a hit: no victim or
        # expiry takes a row stamped this step), the fallback, or the row it is placed in
        missed = (~hit).nonzero()[0]
        missed_count = missed.size
        fresh, counts = distinct[missed], occurrences[missed]
        found[missed] = self._fallback(fresh)
        passed, cells = self._admit(fresh, counts, step, out)
        if passed is not None:
            kept = passed.nonzero()[0]  # one pass over the mask, not one per array
            missed, fresh = missed[kept], fresh[kept]
            counts, cells = counts[kept], cells[kept]
            if self.settings.admit_probability == 1:  # the filter alone refused the rest
                out.refused["filter"] = missed_count - fresh.size
        # without expiry the owned rows not seen now are those owned before less those seen
        unseen = lookup.owned - seen.size if expired is None else None
        placed, evicted = self._place(fresh.size, step, placement, out, unseen)
        taken = placed.size
        self.watch(SLOTS, placed)
        out.refused["full"] = fresh.size - taken
        if taken < fresh.size:
            missed, fresh = missed[:taken], fresh[:taken]
            counts, cells = counts[:taken], cells[:taken]
        views.slot_ids[placed] = fresh
        last_seen[placed] = step
        use_count[placed] = counts
        if self.settings.cells and taken:
            views.filter_counts[cells] = 0  # evicted later, it earns admission again
        found[missed] = placed
        out.admitted = taken
        if taken:
            out.placed = placed
        if expired is None:
            out.owned = lookup.owned + taken - evicted
            if taken:  # else no owner changed: the lookup stands
                free = placed[: taken - evicted]  # placed: the free rows, then the evicted
                self._lookup = lookup.refilled(fresh, placed, free, out.owned, lookup.made_from)
        else:
            out.owned = lookup.owned - expired.size + taken - evicted
            self._lookup = lookup.replace(fresh, placed, out.owned, lookup.made_from)
        stamped = np.concatenate([seen, placed]) if taken else seen
        placement.stamped(step, stamped)
        out.changed_slots = stamped if expired is None else np.concatenate([stamped, expired])
        self._remember(ids, had_empty, distinct, found)
        return out

    def _expire(self, step: int, placement: Placement, out: Observed) -> Int64s | None:
        """Free the rows unseen too long (None: none were)."""
        assert placement.recency is not None
        stale = placement.recency.pop(step - self.settings.expire_after_steps, self.capacity)
        if stale.size == 0:
            return None
        self.watch(OWNERS, stale)
        self._views.slot_ids[stale] = EMPTY  # their pairs in the lookup are stale now
        placement.free.add(stale)
        out.evicted["expired"] = stale.size
        return stale

    def _cells(self, ids: Int64s) -> Int64s:
        # Fibonacci hashing (the product's high bits): 3 ops where mix64 takes 12, and the
        # filter only needs IDs spread over its cells
        mixed: Int64s = ((ids ^ self._seed_mix) * _GOLDEN) >> 24
        cells: Int64s = np.remainder(mixed, self._scalars[0])
        return cells

    def _admit(
        self, ids: Int64s, counts: Int64s, step: int, out: Observed
    ) -> tuple[np.ndarray[Any, np.dtype[np.bool_]] | None, Int64s]:
        """Which new IDs pass the filter and the draw (None: all of them); and their filter
        cells (the IDs themselves when there is no filter: never read then). Counts the
        refusals, but those of the filter alone the caller counts (from the sizes)."""
        passed = None
        cells = ids
        if self.settings.cells:
            k = self._scalars[1]
            cells = self._cells(ids)
            self.watch(CELLS, cells)  # and the cells admission clears: a subset
            filter_counts = self._views.filter_counts
            np.add.at(filter_counts, cells, counts)
            total = np.minimum(filter_counts[cells], k)  # saturating
            filter_counts[cells] = total
            passed = total >= k
            out.changed_cells = cells
            if self.settings.admit_probability == 1:  # the caller counts the refused
                return passed, cells
            out.refused["filter"] = ids.size - int(np.count_nonzero(passed))
        if self.settings.admit_probability < 1:
            drawn = uniform_host(ids, step, self.settings.seed) < self.settings.admit_probability
            if passed is None:
                out.refused["probability"] = ids.size - int(np.count_nonzero(drawn))
                passed = drawn
            else:
                out.refused["probability"] = int(np.count_nonzero(passed & ~drawn))
                passed &= drawn
        return passed, cells

    def _place(
        self, n: int, step: int, placement: Placement, out: Observed, unseen: int | None
    ) -> tuple[Int64s, int]:
        """Rows for ``n`` admitted IDs, free ones then evicted ones; and how many were evicted
        (their owners' pairs in the lookup are stale once the rows are written). ``unseen``:
        owned rows not seen in this step, when known (see :meth:`Placement.victims`)."""
        if n == 0:
            return _NO_ROWS, 0
        free = placement.free.take(n)
        if free.size == n:
            return free, 0
        # the free list is empty now
        victims = placement.victims(n - free.size, step, free, unseen)
        out.evicted[self.settings.evict] = victims.size
        return (np.concatenate([free, victims]) if free.size else victims), victims.size


_GOLDEN = np.int64(GOLDEN)
_DERIVED = frozenset({"_lookup", "_views", "_placement", "_answer"})  # plain attributes


class _Answer:
    """The rows one ``observe`` settled for its IDs: valid while ``ids`` is unchanged and the
    lookup it left stands (a later step, a load or a delta replaces the lookup)."""

    __slots__ = ("distinct", "ids", "lookup", "rows", "version")

    def __init__(
        self, ids: torch.Tensor, lookup: SortedLookup | None, distinct: Int64s, rows: Int64s
    ) -> None:
        self.ids, self.version, self.lookup = ids, ids._version, lookup
        self.distinct, self.rows = distinct, rows

    def answers(self, ids: torch.Tensor, mapping: DynamicMapping) -> bool:
        lookup = mapping._lookup
        return (
            ids is self.ids
            and ids._version == self.version
            and lookup is self.lookup
            and lookup is not None
            and lookup.made_from == token(mapping._slot_ids())
        )


@dataclass(frozen=True)
class _Views:
    """numpy views of a mapping's buffers (taking one costs a dispatch: once per rebuild)."""

    slot_ids: Int64s
    last_seen: Int64s
    use_count: Int64s
    step: Int64s
    filter_counts: Int64s

    @classmethod
    def of(cls, m: DynamicMapping) -> _Views:
        cells = m.filter_counts.numpy() if m.settings.cells else _NO_ROWS
        return cls(
            m.slot_ids.numpy(), m.last_seen.numpy(), m.use_count.numpy(), m.step.numpy(), cells
        )
