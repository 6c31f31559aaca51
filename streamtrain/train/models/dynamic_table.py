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

Lookups are vectorised: a copy of the occupied ``slot_ids`` sorted, with their rows, searched
by ``torch.searchsorted``; re-sorted when ``observe`` changed the mapping and when the buffers
were written from outside (a checkpoint load, a served snapshot: the buffer's version moved).
An incremental merge was measured slower than the sort up to a million rows on CPU (masked
writes cost more than ``torch.sort``), so the sort it is: a step that admits or evicts costs
O(capacity) (docs/models.md gives the figures and the sizing advice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from streamtrain.train.models.sparse_params import TableSettings

EMPTY = -(1 << 63)  # int64 min marks a free row; a raw ID equal to it is never admitted
_BIG = (1 << 63) - 1
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 (wrap-around products, logical shifts by masks)."""
    z = x * _GOLDEN
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * -4658895280553007687
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * -7723592293110705685
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def uniform(ids: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """A float64 in [0, 1) per ID, a fixed function of (ID, step, seed)."""
    salt = int(mix64(torch.tensor([step * 1_000_003 + seed]))[0])
    return ((mix64(ids ^ salt) >> 11) & ((1 << 53) - 1)).double() / float(1 << 53)


@dataclass
class Observed:
    """What one ``observe`` did: rows to reset (newly owned), rows and filter cells whose
    buffers changed, and the counts the metrics export."""

    reset: torch.Tensor
    changed_slots: torch.Tensor
    changed_cells: torch.Tensor
    admitted: int = 0
    refused: dict[str, int] = field(
        default_factory=lambda: {"filter": 0, "probability": 0, "full": 0}
    )
    evicted: dict[str, int] = field(default_factory=lambda: {"lru": 0, "lfu": 0, "expired": 0})


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
        self._seed_mix = int(mix64(torch.tensor([settings.seed]))[0])
        # (slot_ids storage, its version, sorted owners, their rows): see _sorted
        self._lookup: tuple[int, int, torch.Tensor, torch.Tensor] | None = None
        self._index: torch.Tensor | None = None  # arange(capacity), the tie-breaker

    @property
    def row_sparse_buffers(self) -> list[str]:
        """Buffers whose changes a delta carries as rows (``train/row_tracker.py``)."""
        names = ["slot_ids", "last_seen", "use_count"]
        return [*names, "filter_counts"] if self.settings.cells else names

    @property
    def occupied(self) -> int:
        return int((self.slot_ids != EMPTY).sum())

    # --- lookup ---------------------------------------------------------------------------
    def _sorted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The sorted owners and their rows; rebuilt when the buffer moved outside observe.

        One tuple attribute, replaced whole: concurrent serving threads may race to rebuild,
        and each reads a consistent pair."""
        ids = self.slot_ids
        cached = self._lookup
        if cached is not None and cached[:2] == (ids.data_ptr(), ids._version):
            return cached[2], cached[3]
        return self.rebuild()

    def rebuild(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sort the owned rows by raw ID (the serving slot calls it inside its swap)."""
        ids = self.slot_ids
        rows = (ids != EMPTY).nonzero().squeeze(1)
        keys, order = torch.sort(ids[rows])
        self._lookup = (ids.data_ptr(), ids._version, keys, rows[order])
        return keys, rows[order]

    def _find(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hit mask, row where hit) of ``ids``."""
        keys, rows = self._sorted()
        if keys.numel() == 0:
            return torch.zeros_like(ids, dtype=torch.bool), torch.zeros_like(ids)
        at = torch.searchsorted(keys, ids).clamp_max(keys.numel() - 1)
        return keys[at] == ids, rows[at]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The physical row of each ID: its own, or ``capacity + hash % fallback_rows``."""
        hit, rows = self._find(ids)
        if self.settings.fallback_rows == 1:  # one shared row: no hash to compute
            return torch.where(hit, rows, self.capacity)
        fallback = self.capacity + torch.remainder(mix64(ids), self.settings.fallback_rows)
        return torch.where(hit, rows, fallback)

    # --- decisions ------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, ids: torch.Tensor) -> Observed:
        """One training step's decisions for the IDs of its (union) batch; see the module doc."""
        step = int(self.step) + 1
        self.step.fill_(step)
        unique, counts = torch.unique(ids, return_counts=True)
        if unique.numel() and int(unique[0]) == EMPTY:  # sorted: EMPTY, the int64 min, first
            unique, counts = unique[1:], counts[1:]
        hit, hit_rows = self._find(unique)
        seen = hit_rows[hit]
        self.last_seen[seen] = step
        self.use_count[seen] += counts[hit]
        out = Observed(reset=seen[:0], changed_slots=seen, changed_cells=seen[:0])
        expired = self._expire(step, out)
        if bool(hit.all()) and expired.numel() == 0:
            return out  # nothing new: the mapping and its lookup stand
        fresh, fresh_counts = unique[~hit], counts[~hit]
        passed, cells = self._admit(fresh, fresh_counts, step, out)
        fresh, fresh_counts, cells = fresh[passed], fresh_counts[passed], cells[passed]
        assert self._lookup is not None  # _find brought it up to date before any write
        owned = self._lookup[2].numel() - expired.numel()
        placed = self._place(fresh.numel(), step, owned, out)
        out.refused["full"] = fresh.numel() - placed.numel()
        taken = placed.numel()
        fresh, fresh_counts, cells = fresh[:taken], fresh_counts[:taken], cells[:taken]
        self.slot_ids[placed] = fresh
        self.last_seen[placed] = step
        self.use_count[placed] = fresh_counts
        if self.settings.cells and taken:
            self.filter_counts[cells] = 0  # evicted later, it earns admission again
        out.admitted = taken
        out.reset = placed
        out.changed_slots = torch.cat([seen, expired, placed])
        self.rebuild()
        return out

    def _expire(self, step: int, out: Observed) -> torch.Tensor:
        after = self.settings.expire_after_steps
        if not after:
            return self.slot_ids[:0]
        stale = ((self.slot_ids != EMPTY) & (self.last_seen < step - after)).nonzero().squeeze(1)
        self.slot_ids[stale] = EMPTY
        out.evicted["expired"] = stale.numel()
        return stale

    def _cells(self, ids: torch.Tensor) -> torch.Tensor:
        # Fibonacci hashing (the product's high bits): 3 ops where mix64 takes 12, and the
        # filter only needs IDs spread over its cells
        return torch.remainder(((ids ^ self._seed_mix) * _GOLDEN) >> 24, self.settings.cells)

    def _admit(
        self, ids: torch.Tensor, counts: torch.Tensor, step: int, out: Observed
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which new IDs pass the filter (and the draw); and their filter cells (zeros when
        there is no filter)."""
        passed = torch.ones_like(ids, dtype=torch.bool)
        k = self.settings.admit_after
        cells = torch.zeros_like(ids)
        if self.settings.cells:
            cells = self._cells(ids)
            self.filter_counts.index_add_(0, cells, counts)
            self.filter_counts[cells] = self.filter_counts[cells].clamp_max(k)  # saturating
            passed = self.filter_counts[cells] >= k
            out.changed_cells = cells
        out.refused["filter"] = int((~passed).sum())
        if self.settings.admit_probability < 1:
            drawn = uniform(ids, step, self.settings.seed) < self.settings.admit_probability
            out.refused["probability"] = int((passed & ~drawn).sum())
            passed &= drawn
        return passed, cells

    def _place(self, n: int, step: int, owned: int, out: Observed) -> torch.Tensor:
        """Rows for ``n`` admitted IDs: free ones, then evicted ones (``owned``: rows owned
        now, so a full table skips the scans for free rows)."""
        if n == 0:
            return self.slot_ids[:0]
        free = self.slot_ids[:0]
        if owned < self.capacity:
            free = (self.slot_ids == EMPTY).nonzero().squeeze(1)
            if n <= free.numel():
                return free[:n]
            evictable = (self.slot_ids != EMPTY) & (self.last_seen < step)
        else:
            evictable = self.last_seen < step
        need = min(n - free.numel(), int(evictable.sum()))
        victims = self._victims(evictable, need) if need else free[:0]
        out.evicted[self.settings.evict] = victims.numel()
        return torch.cat([free, victims])

    def _victims(self, evictable: torch.Tensor, m: int) -> torch.Tensor:
        """The ``m`` evictable rows that go first (LRU: oldest ``last_seen``; LFU: fewest
        uses, then oldest); every key is made unique by the row index, so ties end alike."""
        if self._index is None or self._index.device != evictable.device:
            self._index = torch.arange(self.capacity, device=evictable.device)
        recency = torch.where(evictable, self.last_seen * self.capacity + self._index, _BIG)
        if self.settings.evict == "lru":
            return torch.topk(recency, m, largest=False).indices
        uses = torch.where(evictable, self.use_count, _BIG)
        threshold = torch.kthvalue(uses, m).values
        below = (uses < threshold).nonzero().squeeze(1)
        tied = torch.where(uses == threshold, recency, _BIG)
        rest = torch.topk(tied, m - below.numel(), largest=False).indices
        return torch.cat([below, rest])


def rebuild_lookups(model: nn.Module) -> None:
    """Re-sort every dynamic table's lookup after its buffers were written from outside (the
    serving slot, inside its swap, so no request pays for the sort)."""
    for module in model.modules():
        if isinstance(module, DynamicMapping):
            module.rebuild()
