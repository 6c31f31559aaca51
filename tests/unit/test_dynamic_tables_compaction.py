"""A served dynamic table's ID lookup compacts inside its own arrays (``dynamic_compact``), finds
exactly what it found before, and holds no second copy of itself while it compacts or while a
base re-sorts it: measured by the arrays numpy allocates (tracemalloc), not by RSS."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from streamtrain.train.models import dynamic_compact, dynamic_lookup
from streamtrain.train.models.dynamic_lookup import EMPTY, SortedLookup, recent_bound
from streamtrain.train.models.dynamic_mappings import refresh_lookups
from streamtrain.train.models.dynamic_table import DynamicMapping
from streamtrain.train.models.sparse_params import TableSettings


def _mapping(capacity: int, owned: int, rng: np.random.Generator) -> DynamicMapping:
    """A two-level mapping with ``owned`` random rows owned by distinct random IDs."""
    m = DynamicMapping(TableSettings(kind="dynamic", capacity=capacity))
    rows = rng.choice(capacity, owned, replace=False)
    ids = rng.choice(1 << 40, owned, replace=False)
    with torch.no_grad():
        m.slot_ids.index_copy_(0, torch.from_numpy(rows), torch.from_numpy(ids))
    m.lookup()  # built from the written buffer
    return m


def _delta(m: DynamicMapping, rng: np.random.Generator, count: int) -> None:
    """A delta as a server applies it: ``count`` rows get new owners (new IDs, IDs moving
    from another row of the delta, a row emptied, a row keeping its owner), written with
    ``index_copy_``, then the lookup refreshed (``DynamicMapping.refresh``)."""
    owners = m.slot_ids.numpy()
    rows = rng.choice(m.capacity, count, replace=False)
    old = owners[rows].copy()
    new = rng.choice(1 << 40, count, replace=False).astype(np.int64)
    eighth, half = count // 8, count // 2
    new[:eighth] = EMPTY
    new[half : half + eighth] = old[half + eighth : half + 2 * eighth]  # moved in
    new[half + eighth : half + 2 * eighth] = EMPTY  # ... from rows emptied here
    new[-1] = old[-1]  # kept
    with torch.no_grad():
        m.slot_ids.index_copy_(0, torch.from_numpy(rows), torch.from_numpy(new))
    m.refresh(torch.from_numpy(rows), torch.from_numpy(old))


def _probe(m: DynamicMapping, rng: np.random.Generator) -> np.ndarray:
    """Owned IDs, IDs never owned, and IDs that left their rows (stale pairs)."""
    owners = m.slot_ids.numpy()
    owned = owners[owners != EMPTY]
    return np.concatenate([rng.choice(owned, 500), rng.integers(-(1 << 40), 1 << 40, 500)])


@pytest.mark.parametrize("piece", [7, 1 << 16], ids=["small pieces", "default pieces"])
def test_an_in_place_compaction_finds_exactly_what_the_lookup_found_before(
    piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dynamic_compact, "PIECE", piece)
    rng = np.random.default_rng(3)
    m = _mapping(5000, 4000, rng)
    compactions = 0
    stale: list[int] = []
    for _ in range(30):
        before = m.lookup()
        owners = m.slot_ids.numpy()
        stale.extend(before.keys[owners[before.rows] != before.keys][:20].tolist())
        _delta(m, rng, int(rng.integers(20, 400)))
        ids = np.concatenate([_probe(m, rng), np.array(stale, dtype=np.int64)])
        ahead = m.lookup()
        if ahead.new_keys.size == 0:
            compactions += 1
        hit, rows = ahead.find(ids)
        want_hit, want_rows = SortedLookup.build(m.slot_ids).find(ids)
        assert np.array_equal(hit, want_hit)
        assert np.array_equal(rows[hit], want_rows[want_hit])
        assert np.array_equal(m.slot_ids.numpy()[rows[hit]], ids[hit])
        assert ahead.room is not None, "a served lookup keeps its room"
        keys, found = ahead.pairs()
        assert np.array_equal(keys, np.sort(owners[owners != EMPTY]))
        assert np.array_equal(owners[found], keys)
    assert compactions >= 3, "the deltas compacted the lookup"


def test_a_delta_that_compacts_gives_every_id_the_same_row_as_before_it() -> None:
    """Before/after one compaction, on random IDs (owned, absent, stale): the rows of the IDs
    the delta did not touch are unchanged, and the lookup's levels merged into one."""
    rng = np.random.default_rng(8)
    m = _mapping(40_000, 30_000, rng)
    _delta(m, rng, recent_bound(m.capacity) // 2)
    before = m.lookup()
    assert before.new_keys.size  # two levels before
    ids = _probe(m, rng)
    hit_before, rows_before = before.find(ids)
    rows_before = rows_before.copy()  # the compaction rewrites the arrays they came from
    pre = m.slot_ids.numpy().copy()
    _delta(m, rng, recent_bound(m.capacity))  # three quarters of it come: past the bound
    after = m.lookup()
    assert after.new_keys.size == 0 and after.keys.size == after.owned
    untouched = pre == m.slot_ids.numpy()
    hit_after, rows_after = after.find(ids)
    same = hit_before & untouched[rows_before]
    assert same.sum() > 0
    assert hit_after[same].all() and np.array_equal(rows_after[same], rows_before[same])
    gone = ~np.isin(ids, m.slot_ids.numpy())
    assert not hit_after[gone].any()


def _peak_over(fn: Callable[[], object]) -> int:
    """Bytes allocated by ``fn`` above what was allocated when it started, at its peak (the
    caller traces from before the arrays ``fn`` may free were made: an untraced array's free
    is not counted)."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not tracing:
            tracemalloc.stop()
    return peak - start


def test_a_served_compaction_makes_no_array_of_the_tables_size() -> None:
    """In place (a server's delta) the compaction allocates pieces only; copying (the
    trainer's) it held the valid pairs and the merged ones beside the old: twice the lookup."""
    rng = np.random.default_rng(1)
    capacity = 1_000_000
    lookup_bytes = 16 * capacity
    m = _mapping(capacity, capacity - 10, rng)
    count = recent_bound(capacity) + 1
    rows = rng.choice(capacity, count, replace=False)
    came = np.arange(1 << 50, (1 << 50) + count, dtype=np.int64)
    before = torch.from_numpy(m.slot_ids.numpy()[rows].copy())
    copying = m.lookup()
    with torch.no_grad():
        m.slot_ids.index_copy_(0, torch.from_numpy(rows), torch.from_numpy(came))
    made_from = dynamic_lookup.token(m.slot_ids)
    copied = _peak_over(lambda: copying.replace(came, rows, copying.owned, made_from))
    assert copied >= lookup_bytes  # the measure sees a copy where there is one
    in_place = _peak_over(lambda: m.refresh(torch.from_numpy(rows), before))
    assert m.lookup().new_keys.size == 0, "the delta compacted the lookup"
    assert in_place < lookup_bytes // 4, (in_place, lookup_bytes)  # pieces: 2.5 MB here
    hit, found = m.lookup().find(came)
    assert hit.all() and np.array_equal(found, rows)


class _Copy(nn.Module):
    def __init__(self, mapping: DynamicMapping) -> None:
        super().__init__()
        self.m = mapping


def test_a_base_drops_the_old_lookup_of_every_copy_before_it_sorts_the_new() -> None:
    """The slot's two copies share one lookup: a base's re-sort starts after both let go of
    the old one, so the old and new lookups are never held together."""
    rng = np.random.default_rng(2)
    capacity = 300_000
    tracemalloc.start()
    try:
        _rebuilt_once(capacity, rng)
    finally:
        tracemalloc.stop()


def _rebuilt_once(capacity: int, rng: np.random.Generator) -> None:
    first = _mapping(capacity, capacity, rng)
    second = DynamicMapping(TableSettings(kind="dynamic", capacity=capacity))
    second.slot_ids = first.slot_ids  # one buffer, as the slot's shared tables
    models = [_Copy(first), _Copy(second)]
    refresh_lookups(models, {"m.slot_ids": None}, {})
    assert second.lookup() is first.lookup()
    with torch.no_grad():  # the base's mapping: every row a new owner
        first.slot_ids.copy_(torch.from_numpy(rng.choice(1 << 40, capacity, replace=False)))
    peak = _peak_over(lambda: refresh_lookups(models, {"m.slot_ids": None}, {}))
    # the new lookup (16 bytes a row) and the sort's own scratch, but not the old 16 beside it
    assert peak < 4 * capacity, (peak, 16 * capacity)
    assert second.lookup() is first.lookup()
    owners = first.slot_ids.numpy()
    assert np.array_equal(first.lookup().pairs()[0], np.sort(owners))
