"""The dynamic table's decisions, step by step, against a plain reference model of the rules in
``train/models/dynamic_table.py``'s module doc (dicts and per-ID loops: slow, but each rule is
one readable line), on a short churn stream: new IDs keep arriving and old ones fade, so every
path runs (admission by count and by draw, refusals, free rows, LRU and LFU eviction, expiry).

The vectorised mapping is rewritten for speed; this is what keeps its decisions the same: the
owner of every row, ``last_seen``, ``use_count``, the filter cells, the rows reset and the counts
the metrics export, after every step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from streamtrain.train.models.dynamic_table import EMPTY, DynamicMapping, uniform
from streamtrain.train.models.sparse_params import TableSettings


@dataclass
class Reference:
    """The rules, one ID at a time."""

    settings: TableSettings
    cell_of: Any  # the mapping's own filter hash (a hash, not a decision)
    owner: dict[int, int] = field(default_factory=dict)  # row -> ID
    last_seen: dict[int, int] = field(default_factory=dict)  # row -> step
    uses: dict[int, int] = field(default_factory=dict)  # row -> occurrences
    cells: dict[int, int] = field(default_factory=dict)
    step: int = 0

    def observe(self, batch: list[int]) -> dict[str, Any]:
        s = self.settings
        self.step += 1
        step = self.step
        row_of = {i: r for r, i in self.owner.items()}
        counts: dict[int, int] = {}
        for i in batch:
            counts[i] = counts.get(i, 0) + 1
        for i, n in counts.items():  # 1. owners seen
            if i in row_of:
                self.last_seen[row_of[i]] = step
                self.uses[row_of[i]] += n
        expired = 0  # 2. expiry
        if s.expire_after_steps:
            for r in sorted(self.owner):
                if self.last_seen[r] < step - s.expire_after_steps:
                    del self.owner[r]
                    expired += 1
        fresh = sorted(i for i in counts if i not in row_of and i != EMPTY)
        refused = {"filter": 0, "probability": 0, "full": 0}
        passed = fresh
        if s.cells:  # 3. admission: every new ID adds to its cell, then the cells saturate
            cell = {i: int(self.cell_of(np.array([i]))[0]) for i in fresh}
            for i in fresh:
                self.cells[cell[i]] = self.cells.get(cell[i], 0) + counts[i]
            for i in fresh:
                self.cells[cell[i]] = min(self.cells[cell[i]], s.admit_after)
            passed = [i for i in fresh if self.cells[cell[i]] >= s.admit_after]
            refused["filter"] = len(fresh) - len(passed)
        if s.admit_probability < 1:
            draws = uniform(torch.tensor(passed, dtype=torch.int64), step, s.seed).tolist()
            drawn = [i for i, u in zip(passed, draws, strict=True) if u < s.admit_probability]
            refused["probability"] = len(passed) - len(drawn)
            passed = drawn
        rows = self._rows_for(len(passed), step)  # 4. placement, in ascending ID order
        evicted = {"lru": 0, "lfu": 0, "expired": expired}
        evicted[s.evict] = sum(r in self.owner for r in rows)
        refused["full"] = len(passed) - len(rows)
        for i, r in zip(passed, rows, strict=False):
            self.owner[r], self.last_seen[r], self.uses[r] = i, step, counts[i]
            if s.cells:
                self.cells[cell[i]] = 0
        return {"admitted": len(rows), "refused": refused, "evicted": evicted, "reset": rows}

    def _rows_for(self, n: int, step: int) -> list[int]:
        """Free rows (lowest first), then victims among owners not seen this step."""
        free = [r for r in range(self.settings.capacity) if r not in self.owner][:n]
        candidates = [r for r in self.owner if self.last_seen[r] < step]
        m = min(n - len(free), len(candidates))
        if m <= 0:
            return free
        if self.settings.evict == "lru":
            return free + sorted(candidates, key=lambda r: (self.last_seen[r], r))[:m]
        chosen = sorted(candidates, key=lambda r: (self.uses[r], self.last_seen[r], r))[:m]
        # LFU hands out the rows below the m-th use count in row order, then the tied ones
        # from least recent (the order the vectorised victim choice produces)
        threshold = self.uses[chosen[-1]]
        below = sorted(r for r in chosen if self.uses[r] < threshold)
        return free + below + [r for r in chosen if self.uses[r] == threshold]

    def buffers(self) -> dict[str, list[int]]:
        cap = self.settings.capacity
        return {
            "slot_ids": [self.owner.get(r, EMPTY) for r in range(cap)],
            "last_seen": [self.last_seen.get(r, 0) for r in range(cap)],
            "use_count": [self.uses.get(r, 0) for r in range(cap)],
        }


def churn(steps: int, batch: int, seed: int) -> list[list[int]]:
    """Zipf-like draws over a universe that grows by 3 IDs a step; popular ranks shift to the
    newest IDs, so old ones fade (the shape of ``datasets/ctr.py``'s churn)."""
    rng = np.random.default_rng(seed)
    out = []
    for step in range(steps):
        newest = 40 + 3 * step
        rank = np.minimum(rng.zipf(1.3, batch) - 1, newest - 1)
        out.append((newest - rank).tolist())
    return out


CASES = {
    "lru": {"evict": "lru"},
    "lfu": {"evict": "lfu"},
    "count": {"evict": "lru", "admit_after": 3, "filter_cells": 29},
    "count lfu": {"evict": "lfu", "admit_after": 2},
    "probability": {"evict": "lfu", "admit_probability": 0.4, "seed": 7},
    "expiry": {"evict": "lru", "expire_after_steps": 6, "admit_after": 2},
    "expiry lfu": {"evict": "lfu", "expire_after_steps": 3},
}


@pytest.mark.parametrize("case", list(CASES))
def test_decisions_equal_the_reference_model_step_by_step(case: str) -> None:
    settings = TableSettings(kind="dynamic", capacity=37, fallback_rows=3, **CASES[case])
    mapping = DynamicMapping(settings)
    reference = Reference(settings, mapping._cells)
    evictions = 0
    for number, batch in enumerate(churn(160, 24, seed=len(case))):
        ids = torch.tensor(batch, dtype=torch.int64)
        got = mapping.observe(ids)
        want = reference.observe(batch)
        where = f"{case}, step {number + 1}"
        assert got.admitted == want["admitted"], where
        assert got.refused == want["refused"], where
        assert got.evicted == want["evicted"], where
        assert got.reset.tolist() == want["reset"], where
        for name, values in reference.buffers().items():
            assert getattr(mapping, name).tolist() == values, f"{where}: {name}"
        if settings.cells:
            cells = mapping.filter_counts.tolist()
            assert {c: v for c, v in enumerate(cells) if v} == {
                c: v for c, v in reference.cells.items() if v
            }, where
        # every ID of the batch reads its own row, or the fallback region when not admitted
        row_of = {i: r for r, i in reference.owner.items()}
        rows = mapping.rows(ids).tolist()
        for i, r in zip(batch, rows, strict=True):
            assert r == row_of[i] if i in row_of else settings.capacity <= r, where
        evictions += sum(want["evicted"].values())
    assert evictions > 50, "the stream must fill the table and evict"


def test_two_tables_in_one_module_decide_as_each_would_alone() -> None:
    """The module observes all its dynamic tables together; each must decide exactly as a
    mapping fed only its own IDs."""
    from streamtrain.sample.sparse_torch import JaggedTensor
    from streamtrain.sample.spec import SparseFeature
    from streamtrain.train.models.embedding import EmbeddingTables

    lru = TableSettings(kind="dynamic", capacity=23, evict="lru", admit_after=2)
    lfu = TableSettings(kind="dynamic", capacity=19, evict="lfu", fallback_rows=2)
    features = [SparseFeature("u", "users"), SparseFeature("i", "items")]
    module = EmbeddingTables(features, 4, 8, kinds={"users": lru, "items": lfu})
    alone = {"users": DynamicMapping(lru), "items": DynamicMapping(lfu)}
    streams = churn(120, 16, seed=1), churn(120, 16, seed=2)
    for users, items in zip(*streams, strict=True):
        u, i = torch.tensor(users), torch.tensor(items)
        ones = torch.ones(len(users))
        sparse = {
            "u": JaggedTensor(u, torch.arange(len(users)), ones),
            "i": JaggedTensor(i, torch.arange(len(items)), ones),
        }
        done = {table: observed for table, _, observed in module.observe(sparse)}
        for table, ids in (("users", u), ("items", i)):
            want = alone[table].observe(ids)
            assert done[table].reset.tolist() == want.reset.tolist()
            assert done[table].evicted == want.evicted
            got_mapping = module.dynamic[table]
            assert torch.equal(got_mapping.slot_ids, alone[table].slot_ids)
            assert torch.equal(got_mapping.use_count, alone[table].use_count)
            assert torch.equal(got_mapping.rows(ids), alone[table].rows(ids))
