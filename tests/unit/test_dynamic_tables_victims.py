"""The structures that find a dynamic table's free rows and victims without scanning it
(``train/models/dynamic_victims.py``) decide as the plain reference model of the rules, on a
longer churn than ``test_dynamic_tables_reference.py`` (so the recency queue compacts, the LFU
runs merge many times and the lookup's recent level is compacted), and a mapping restored from
a checkpoint mid-stream (its structures rebuilt from the buffers alone) decides exactly as one
that never stopped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamtrain.train.models import dynamic_lookup, dynamic_victims
from streamtrain.train.models.dynamic_lookup import EMPTY, SortedLookup
from streamtrain.train.models.dynamic_table import DynamicMapping
from streamtrain.train.models.dynamic_victims import FreeRows, RecencyQueue
from streamtrain.train.models.sparse_params import TableSettings
from tests.unit.test_dynamic_tables_reference import Reference, churn

LONG = {
    "lru": {"evict": "lru"},
    "lfu": {"evict": "lfu"},
    "lfu expiry": {"evict": "lfu", "expire_after_steps": 5, "admit_after": 2},
    "lru expiry": {"evict": "lru", "expire_after_steps": 2},
}


@pytest.fixture(params=["runs", "scan"])
def lfu_by(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Victims from the frequency runs / recency queue (every size), or from the scans
    (``FrequencyScan``, and ``RecencyScan`` for LRU without expiry; every size)."""
    monkeypatch.setattr(dynamic_victims, "SCAN_BELOW", 0 if request.param == "runs" else 1 << 40)
    return str(request.param)


@pytest.fixture(params=["one level", "two levels"])
def lookup_levels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ID lookup in one level (tables below ``ONE_LEVEL_BELOW`` rows) or in two (larger
    tables: a recent level merged each step, compacted now and then), at every size."""
    one = request.param == "one level"
    monkeypatch.setattr(dynamic_lookup, "ONE_LEVEL_BELOW", 1 << 40 if one else 0)
    return str(request.param)


@pytest.mark.parametrize("case", list(LONG))
def test_a_long_churn_decides_as_the_reference_model(
    case: str, lfu_by: str, lookup_levels: str
) -> None:
    settings = TableSettings(kind="dynamic", capacity=150, fallback_rows=1, **LONG[case])
    mapping = DynamicMapping(settings)
    reference = Reference(settings, mapping._cells)
    for number, batch in enumerate(churn(700, 40, seed=3)):
        got = mapping.observe(torch.tensor(batch, dtype=torch.int64))
        want = reference.observe(batch)
        where = f"{case}, {lookup_levels}, step {number + 1}"
        assert got.reset.tolist() == want["reset"], where
        assert got.evicted == want["evicted"], where
        assert mapping.slot_ids.tolist() == reference.buffers()["slot_ids"], where
    assert mapping.occupied == sum(1 for r in reference.owner)


@pytest.mark.parametrize("evict", ["lru", "lfu"])
def test_a_mapping_restored_mid_stream_decides_as_one_that_never_stopped(
    evict: str, lfu_by: str, lookup_levels: str
) -> None:
    settings = TableSettings(kind="dynamic", capacity=90, evict=evict, expire_after_steps=9)
    stream = [torch.tensor(b, dtype=torch.int64) for b in churn(300, 30, seed=4)]
    kept = DynamicMapping(settings)
    for ids in stream[:150]:
        kept.observe(ids)
    restored = DynamicMapping(settings)
    restored.load_state_dict(kept.state_dict())  # a checkpoint: buffers only
    for ids in stream[150:]:
        a, b = kept.observe(ids), restored.observe(ids)
        assert a.reset.tolist() == b.reset.tolist()
        assert a.evicted == b.evicted
        for name in ("slot_ids", "last_seen", "use_count"):
            assert torch.equal(getattr(kept, name), getattr(restored, name)), name


def test_the_recency_queue_skips_stale_entries_and_stops_at_the_stamp_limit() -> None:
    owners = np.array([10, 11, 12, EMPTY], dtype=np.int64)
    last_seen = np.array([1, 3, 2, 0], dtype=np.int64)
    queue = RecencyQueue(owners, last_seen, np.array([0, 2, 1], dtype=np.int64))
    last_seen[0] = 4  # row 0 seen again at step 4: its entry at stamp 1 is stale
    queue.push(4, np.array([0], dtype=np.int64))
    assert queue.pop(3, 10).tolist() == [2]  # stamps before 3 only: row 2 (stamp 2)
    assert queue.pop(5, 1).tolist() == [1]
    assert queue.pop(5, 5).tolist() == [0]
    assert queue.pop(9, 5).tolist() == []


def test_the_recency_queue_stays_bounded_while_nothing_is_popped() -> None:
    owners = np.arange(8, dtype=np.int64)
    last_seen = np.zeros(8, dtype=np.int64)
    queue = RecencyQueue(owners, last_seen, np.arange(8, dtype=np.int64))
    for step in range(1, 5000):
        rows = np.array([step % 8], dtype=np.int64)
        last_seen[rows] = step
        queue.push(step, rows)
    assert len(queue) <= 1024  # compactions dropped the stale entries
    assert queue.pop(5000, 8).tolist() == [(4999 + k) % 8 for k in range(1, 9)]


def test_free_rows_are_taken_lowest_first_with_freed_rows_merged_in() -> None:
    free = FreeRows(np.array([2, 5, 9], dtype=np.int64))
    assert free.take(1).tolist() == [2]
    free.add(np.array([7, 0], dtype=np.int64))
    assert free.size == 4
    assert free.take(3).tolist() == [0, 5, 7]
    assert free.take(5).tolist() == [9]


def test_the_lookup_believes_no_pair_the_mapping_no_longer_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A two-level lookup checks each pair against the mapping (its levels keep pairs that
    left); a one-level lookup holds only valid pairs and is replaced whenever the mapping
    writes owners. Either way, a write from outside makes the mapping rebuild its lookup."""
    monkeypatch.setattr(dynamic_lookup, "ONE_LEVEL_BELOW", 0)  # two levels at every size
    m = DynamicMapping(TableSettings(kind="dynamic", capacity=4))
    m.observe(torch.tensor([10, 11, 12, 13]))
    lookup = m.lookup()
    m.slot_ids[1] = 99  # written behind the lookup's back: 11's pair is stale, 99 unknown
    hit, rows = lookup.find(np.array([10, 11, 99], dtype=np.int64))
    assert hit.tolist() == [True, False, False] and rows[0] == 0
    assert SortedLookup.build(m.slot_ids).find(np.array([99], dtype=np.int64))[0].tolist() == [True]
    for levels in (0, 1 << 40):
        monkeypatch.setattr(dynamic_lookup, "ONE_LEVEL_BELOW", levels)
        m = DynamicMapping(TableSettings(kind="dynamic", capacity=4))
        m.observe(torch.tensor([10, 11, 12, 13]))
        m.slot_ids[1] = 99
        assert m.rows(torch.tensor([10, 11, 99])).tolist() == [0, 4, 1], levels
