"""Row-wise sharded embedding tables: two gloo ranks equal one process on the union batch.

Two real processes (torch.multiprocessing spawn) join a gloo group through a file store. The
``users`` table is ``row_wise``: each rank holds only the rows ``g % 2 == rank``; the
``items`` table stays replicated. Each rank learns its own slice of every batch (rank 1's
slice of one step is empty, one slice holds a NaN); the test compares every rank's shard
rows, Adagrad row sums and replicated weights with a single process on the union batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from streamtrain.distributed.row_exchange import attach_row_exchange
from streamtrain.distributed.sparse_sync import sparse_embedding_weights
from streamtrain.distributed.step_sync import GradientSync, attach_moments_sync
from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.models.embedding import EmbeddingTables, hash_rows
from streamtrain.train.models.row_layout import ShardLayout
from streamtrain.train.models.sparse_params import TableSettings
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead

SPEC = SampleSpec(
    feature_shape=(3,),
    task="binary",
    sparse=(SparseFeature("user", "users", 2), SparseFeature("items", "items", 4)),
)
# 41 rows: rank 0 holds 21, rank 1 holds 20; few rows, so the ranks' IDs collide on rows
PARAMS = {"rows": 41, "embedding_dim": 4, "tables": {"users": {"sharding": "row_wise"}}}
SPLITS = [(5, 3), (4, 0), (2, 6), (3, 3), (6, 2)]
POISONED = 3  # rank 1's slice holds a NaN there: both ranks refuse the step
SHARD = "embeddings.tables.t_users.weight"


def _learner(name: str) -> Learner:
    torch.manual_seed(0)
    model = build_model(name, SPEC, PARAMS)
    return Learner(model, TaskHead(SPEC), build_optimizer(model.parameters(), "adagrad", lr=0.1))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Any]]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for step, (a, b) in enumerate(SPLITS):
        n = a + b
        x = torch.randn(n, 3, generator=g)
        if step == POISONED:
            x[a, 1] = float("nan")
        ids = [
            (
                torch.randint(
                    0, 500, (int(torch.randint(1, 3, (1,), generator=g)),), generator=g
                ).tolist(),
                torch.randint(
                    0, 500, (int(torch.randint(0, 5, (1,), generator=g)),), generator=g
                ).tolist(),
            )
            for _ in range(n)
        ]
        out.append((x, (x[:, 0] > 0).long(), torch.rand(n, generator=g) + 0.5, ids))
    return out


def _jagged(ids: list[Any]) -> dict[str, JaggedTensor]:
    return {
        "user": JaggedTensor.from_lists([u for u, _ in ids]),
        "items": JaggedTensor.from_lists([i for _, i in ids]),
    }


def _state(learner: Learner) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in learner.model.named_parameters()}
    state = {k: v.clone() for k, v in learner.model.state_dict().items()}
    for p, s in learner.optimizer.state.items():
        state[f"adagrad_sum.{names[id(p)]}"] = s["sum"]
    return state


def _rank_main(rank: int, name: str, store: str, out: str) -> None:
    reference = _learner(name).model.state_dict()  # built before the group: whole tables
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        learner = _learner(name)
        owned = ShardLayout(rank, 2).owned(PARAMS["rows"])
        start = {k: (v[owned] if k == SHARD else v) for k, v in reference.items()}
        learner.model.load_state_dict(start)  # the single process's starting rows
        exchange, sharded = attach_row_exchange(learner.model)
        assert [p.shape[0] for p in sharded] == [len(owned)]
        learner.step_reducer = GradientSync(
            sparse_embedding_weights(learner.model), exchange, sharded
        )
        attach_moments_sync(learner.model)
        outcomes = []
        for (x, y, w, ids), (a, _) in zip(_batches(), SPLITS, strict=True):
            rows = slice(0, a) if rank == 0 else slice(a, None)
            result = learner.learn(x[rows], y[rows], w[rows], _jagged(ids[rows]))
            outcomes.append([result.samples, int(result.applied), float(result.loss)])
        save_file({**_state(learner), "owned": owned}, f"{out}/rank{rank}.safetensors")
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(outcomes))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["dlrm", "fm"])  # pooled lookups, and per-ID lookups
def test_row_wise_step_equals_union_step(name: str, tmp_path: Path) -> None:
    mp.start_processes(
        _rank_main,
        args=(name, str(tmp_path / "store"), str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    single = _learner(name)
    expected = []
    for x, y, w, ids in _batches():
        result = single.learn(x, y, w, _jagged(ids))
        expected.append([result.samples, int(result.applied), float(result.loss)])
    assert [e[1] for e in expected] == [1, 1, 1, 0, 1]  # the poisoned step was refused
    want = _state(single)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    # each rank's IDs are exactly its rows; together they cover the table once
    assert ranks[0]["owned"].tolist() == list(range(0, 41, 2))
    assert ranks[1]["owned"].tolist() == list(range(1, 41, 2))
    touched = {  # the rows of the applied steps' users
        int(row)
        for step, (*_, ids) in enumerate(_batches())
        if step != POISONED
        for user, _ in ids
        for row in hash_rows(torch.tensor(user), 41).tolist()
    }
    for key, tensor in want.items():
        for r, got in enumerate(ranks):
            if key.endswith(SHARD):
                tensor_r = tensor[got["owned"]]
                assert got[key].shape == tensor_r.shape, f"rank {r} holds the wrong rows"
                torch.testing.assert_close(got[key], tensor_r, rtol=1e-5, atol=1e-6, msg=key)
            else:
                assert torch.equal(got[key], ranks[0][key]), f"{key} differs between ranks"
                torch.testing.assert_close(got[key], tensor, rtol=1e-5, atol=1e-6, msg=key)
    moved = want[SHARD] != _learner(name).model.state_dict()[SHARD]
    moved_rows = set(moved.any(dim=1).nonzero().squeeze(1).tolist())
    # only rows a step read moved (a zero gradient may leave one still), on both shards
    assert moved_rows <= touched and {r % 2 for r in moved_rows} == {0, 1}
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        finite = [i for i in range(len(SPLITS)) if i != POISONED]
        assert [got[i][2] for i in finite] == pytest.approx(
            [expected[i][2] for i in finite], rel=1e-5
        )


def test_layout_splits_rows_by_modulo() -> None:
    for rows in (1, 2, 7, 41):
        shares = [ShardLayout(r, 3).owned(rows).tolist() for r in range(3)]
        assert sorted(row for share in shares for row in share) == list(range(rows))
        assert [ShardLayout(r, 3).local_rows(rows) for r in range(3)] == [len(s) for s in shares]
        for r, share in enumerate(shares):
            assert ShardLayout(r, 3).local(torch.tensor(share, dtype=torch.int64)).tolist() == (
                list(range(len(share)))
            )


def test_row_wise_dynamic_is_refused() -> None:
    with pytest.raises(ValidationError, match="sharding row_wise applies to hashed tables only"):
        TableSettings(kind="dynamic", capacity=10, sharding="row_wise")
    with pytest.raises(ValidationError, match="sharding"):
        TableSettings(sharding="by_column")  # type: ignore[arg-type]


def test_single_process_row_wise_is_the_whole_table() -> None:
    tables = EmbeddingTables(
        [SparseFeature("user", "users")],
        dim=3,
        rows=9,
        kinds={"users": TableSettings(sharding="row_wise")},
    )
    assert not tables.sharded and tables.tables["t_users"].weight.shape == (9, 3)
