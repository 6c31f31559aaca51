"""Dynamic embedding tables: admission by count and by probability, LRU/LFU eviction order,
expiry in steps, reset of weights and optimizer rows on reuse, fallback lookups, the sorted
lookup kept by merges equal to a fresh sort, replay determinism, and settings errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.models.dynamic_table import EMPTY, DynamicMapping, mix64
from streamtrain.train.models.embedding import EmbeddingTables
from streamtrain.train.models.sparse_params import TableSettings
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead


def _mapping(**settings: Any) -> DynamicMapping:
    return DynamicMapping(TableSettings(kind="dynamic", **settings))


def _owners(m: DynamicMapping) -> set[int]:
    return {int(i) for i in m.slot_ids if int(i) != EMPTY}


def _ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def test_admission_by_count_waits_for_k_occurrences_across_steps() -> None:
    m = _mapping(capacity=8, admit_after=3, filter_cells=64)
    first = m.observe(_ids(5, 6))
    assert first.admitted == 0 and first.refused["filter"] == 2
    second = m.observe(_ids(5))
    assert second.admitted == 0 and _owners(m) == set()
    third = m.observe(_ids(5, 6, 6))  # 5's third occurrence; 6 reaches 3 within this batch
    assert third.admitted == 2 and _owners(m) == {5, 6}
    # admitted IDs' cells are cleared: an evicted ID has to earn its row again
    assert int(m.filter_counts.sum()) == 0
    assert m.rows(_ids(5, 6)).tolist() != [8, 8]


def test_admission_by_probability_is_a_replayable_draw_per_occurrence() -> None:
    def run() -> tuple[list[int], DynamicMapping]:
        m = _mapping(capacity=5000, admit_probability=0.25, seed=3)
        admitted = [m.observe(torch.arange(i * 1000, (i + 1) * 1000)).admitted for i in range(4)]
        # IDs refused once get another draw on their next occurrence
        admitted.append(m.observe(torch.arange(0, 1000)).admitted)
        return admitted, m

    first, m = run()
    again, m2 = run()
    assert first == again and torch.equal(m.slot_ids, m2.slot_ids)
    assert all(180 < n < 320 for n in first[:4]), first  # about a quarter of each 1000
    assert 130 < first[4] < 250, first  # a quarter of the ~750 refused the first time


def test_lru_evicts_the_least_recently_seen_row() -> None:
    m = _mapping(capacity=3, evict="lru")
    m.observe(_ids(1))
    m.observe(_ids(2))
    m.observe(_ids(3))
    m.observe(_ids(1))  # 2 is now the least recently seen
    out = m.observe(_ids(4))
    assert out.evicted["lru"] == 1 and _owners(m) == {1, 3, 4}
    out = m.observe(_ids(5, 6))  # needs two rows: 3 then 1 go (4 was seen last step)
    assert out.evicted["lru"] == 2 and _owners(m) == {4, 5, 6}


def test_lfu_evicts_the_least_used_row_ties_by_recency() -> None:
    m = _mapping(capacity=3, evict="lfu")
    m.observe(_ids(1, 1, 1))
    m.observe(_ids(2))
    m.observe(_ids(3, 3))
    m.observe(_ids(2))  # uses: 1 -> 3, 2 -> 2, 3 -> 2; 3 was seen before 2's last use
    out = m.observe(_ids(4))
    assert out.evicted["lfu"] == 1 and _owners(m) == {1, 2, 4}
    m.observe(_ids(4, 4, 4, 4))
    m.observe(_ids(5))  # 2 is now the least used
    assert _owners(m) == {1, 4, 5}


def test_ids_of_the_current_step_are_never_evicted_and_the_rest_is_refused() -> None:
    m = _mapping(capacity=2)
    out = m.observe(_ids(1, 2, 3))
    assert out.admitted == 2 and out.refused["full"] == 1 and _owners(m) == {1, 2}
    out = m.observe(_ids(1, 2, 3))  # both rows are in use this step: nothing to evict
    assert out.admitted == 0 and out.refused["full"] == 1 and out.evicted["lru"] == 0


def test_expiry_frees_rows_unseen_for_the_set_number_of_steps() -> None:
    m = _mapping(capacity=4, expire_after_steps=2)
    m.observe(_ids(1, 2))
    m.observe(_ids(1))
    m.observe(_ids(1))
    assert _owners(m) == {1, 2}  # 2 unseen for 2 steps: not yet more than 2
    out = m.observe(_ids(1))
    assert out.evicted["expired"] == 1 and _owners(m) == {1}
    assert int(m.rows(_ids(2))[0]) == 4  # its ID reads the fallback again


def test_unknown_ids_read_the_fallback_rows() -> None:
    one = _mapping(capacity=4, fallback_rows=1)
    one.observe(_ids(10))
    assert one.rows(_ids(11, 12, -5)).tolist() == [4, 4, 4]
    several = _mapping(capacity=4, fallback_rows=16, admit_after=2)
    rows = several.rows(torch.arange(100))
    assert bool(((rows >= 4) & (rows < 20)).all()) and rows.unique().numel() > 10
    assert torch.equal(rows, 4 + torch.remainder(mix64(torch.arange(100)), 16))


def test_lookup_finds_every_owner_and_only_owners_under_churn() -> None:
    m = _mapping(capacity=64, evict="lfu", expire_after_steps=5, admit_after=2)
    g = torch.Generator().manual_seed(1)
    for step in range(200):
        ids = torch.randint(step, step + 120, (40,), generator=g) * 7919 - 50_000
        m.observe(ids)
        owners = m.slot_ids[m.slot_ids != EMPTY]
        assert owners.unique().numel() == owners.numel()  # no two IDs share a row
        assert torch.equal(m.slot_ids[m.rows(owners)], owners), step
        others = ids[~torch.isin(ids, owners)]
        assert bool((m.rows(others) == 64).all()), step
    # buffers written from outside (a checkpoint load) are found without an explicit rebuild
    loaded = _mapping(capacity=64, evict="lfu", expire_after_steps=5, admit_after=2)
    assert int(loaded.rows(owners[:1])[0]) == 64
    loaded.load_state_dict(m.state_dict())
    assert torch.equal(loaded.rows(owners), m.rows(owners))


SPEC = SampleSpec(
    (3,), "binary", sparse=(SparseFeature("user", "users", 2), SparseFeature("items", "items", 4))
)
PARAMS: dict[str, Any] = {
    "embedding_dim": 4,
    "rows": 50,
    "bottom_sizes": [8],
    "top_sizes": [8],
    "tables": {"items": {"kind": "dynamic", "capacity": 6, "evict": "lfu", "admit_after": 2}},
}


def _learner() -> Learner:
    torch.manual_seed(0)
    model = build_model("dlrm", SPEC, PARAMS)
    return Learner(model, TaskHead(SPEC), build_optimizer(model.parameters(), "adagrad", lr=0.1))


def _batches(count: int, seed: int = 2) -> list[tuple[torch.Tensor, ...] | Any]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(count):
        x = torch.randn(5, 3, generator=g)
        items = [(torch.randint(0, 12, (3,), generator=g) + step // 4).tolist() for _ in range(5)]
        users = [[int(u)] for u in torch.randint(0, 9, (5,), generator=g)]
        sparse = {"user": JaggedTensor.from_lists(users), "items": JaggedTensor.from_lists(items)}
        out.append((x, (x[:, 0] > 0).long(), torch.ones(5), sparse))
    return out


def _tables(learner: Learner) -> EmbeddingTables:
    tables = learner.model.embeddings
    assert isinstance(tables, EmbeddingTables)
    return tables


def test_a_reused_row_starts_afresh_weights_and_adagrad_sum() -> None:
    learner = _learner()
    tables = _tables(learner)
    mapping = tables.dynamic["items"]
    weight = tables.tables["t_items"].weight
    reused = 0
    for x, y, w, sparse in _batches(40):
        owners = mapping.slot_ids.clone()
        learner.learn(x, y, w, sparse)
        changed = ((owners != EMPTY) & (mapping.slot_ids != owners)).nonzero().squeeze(1)
        if changed.numel() == 0:
            continue
        reused += changed.numel()
        # Adagrad's sum of a re-owned row holds this step's squared gradient alone
        grad = weight.grad
        assert grad is not None
        this_step = grad.coalesce().to_dense()[changed] ** 2
        torch.testing.assert_close(learner.optimizer.state[weight]["sum"][changed], this_step)
    assert reused > 5, "the batches should make the table re-own rows"


def test_reset_rows_are_reinitialised_and_their_optimizer_rows_zeroed() -> None:
    learner = _learner()
    tables = _tables(learner)
    weight = tables.tables["t_items"].weight
    for x, y, w, sparse in _batches(12):
        learner.learn(x, y, w, sparse)
    sums = learner.optimizer.state[weight]["sum"]
    assert float(sums[:6].abs().sum()) > 0
    mapping = tables.dynamic["items"]
    evicting = {"items": JaggedTensor.from_lists([[1000 + i] for i in range(6)] * 2)}
    seen_before = mapping.last_seen.clone()
    done = {t: o for t, _, o in tables.observe(evicting)}  # twice each: past admit_after
    assert done["items"].admitted == 6 and int((mapping.last_seen > seen_before).sum()) == 6
    from streamtrain.train.table_upkeep import reset_optimizer_rows

    reset_optimizer_rows(learner.optimizer, weight, done["items"].reset)
    assert float(sums[done["items"].reset].abs().sum()) == 0.0
    fresh = weight[done["items"].reset]
    assert float(fresh.detach().std()) == pytest.approx(0.01, rel=0.6)  # the table's init_std


def test_replay_of_the_same_batches_is_bit_identical_mapping_and_counters() -> None:
    states = []
    for _ in range(2):
        learner = _learner()
        for x, y, w, sparse in _batches(25):
            learner.learn(x, y, w, sparse)
        states.append(
            {
                **learner.model.state_dict(),
                **{
                    f"sum{i}": s["sum"].clone()
                    for i, s in enumerate(learner.optimizer.state.values())
                },
            }
        )
    assert "embeddings.mappings.t_items.filter_counts" in states[0]
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name
    assert int(states[0]["embeddings.mappings.t_items.step"]) == 25


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "hashed", "capacity": 10}, "capacity applies to kind dynamic only"),
        ({"kind": "dynamic"}, "needs capacity >= 1"),
        ({"kind": "dynamic", "capacity": 4, "evict": "fifo"}, "evict"),
        ({"kind": "dynamic", "capacity": 4, "admit_probability": 0}, "admit_probability"),
        ({"kind": "dynamic", "capacity": 4, "capasity": 3}, "capasity"),
    ],
)
def test_bad_table_settings_are_one_line_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        build_model("dlrm", SPEC, {**PARAMS, "tables": {"items": table}})
    assert "\n" not in str(err.value)


def test_table_settings_name_existing_tables_and_not_table_rows() -> None:
    with pytest.raises(ValueError, match="tables names 'itemz'"):
        build_model(
            "dlrm", SPEC, {**PARAMS, "tables": {"itemz": {"kind": "dynamic", "capacity": 3}}}
        )
    with pytest.raises(ValueError, match=r"size it with tables\.items\.capacity"):
        build_model("dlrm", SPEC, {**PARAMS, "table_rows": {"items": 9}})
