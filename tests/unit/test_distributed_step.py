"""A step of two gloo ranks equals one single-process step on the union of their batches.

Two real processes (torch.multiprocessing spawn) join a gloo group through a file store; each
learns from its own slice of every batch, one slice sometimes empty, one batch non-finite on one
rank only. The test compares their weights, standardisation statistics and outcomes with a
single process learning from the union batches. A model with embedding tables (sparse,
row-wise gradients, Adagrad) must match too, its row tracker included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from streamtrain.distributed.group import PartitionShareError, assign_partitions
from streamtrain.distributed.sparse_sync import sparse_embedding_weights
from streamtrain.distributed.step_sync import (
    GradientSync,
    attach_loss_sync,
    attach_moments_sync,
)
from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.models.embedding import hash_rows
from streamtrain.train.optim import build_optimizer
from streamtrain.train.row_tracker import RowTracker
from streamtrain.train.task import TaskHead

SPECS = {
    "multiclass": SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3),
    # regression built-ins also standardise the targets: a second all-gathered statistic
    "regression": SampleSpec(feature_shape=(4,), task="regression"),
}
# (rank 0's rows, rank 1's rows) of each union batch; rank 1's slice of step 2 is empty
SPLITS = [(5, 3), (4, 0), (2, 6), (3, 3)]
POISONED_STEP = 3  # rank 1's slice holds a NaN there: every rank must refuse the step


def _learner(task: str, name: str = "mlp") -> Learner:
    torch.manual_seed(0)
    spec = SPECS[task]
    model = build_model(name, spec, {"hidden_sizes": [8]})
    opt = build_optimizer(model.parameters(), "adam", lr=0.05)
    return Learner(model, TaskHead(spec), opt, clip_grad_norm=5.0)


def _union_batches(task: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    batches = []
    for step, (a, b) in enumerate(SPLITS):
        x = torch.randn(a + b, 4, generator=g) * 3 + 1
        if step == POISONED_STEP:
            x[a, 0] = float("nan")
        w = torch.rand(a + b, generator=g) + 0.5  # unequal sample weights
        y = x[:, :3].argmax(dim=1) if task == "multiclass" else x[:, :1] * 10 + 40
        batches.append((x, y, w))
    return batches


def _rank_case(rank: int, task: str, name: str, out: Path) -> None:
    learner = _learner(task, name)
    learner.step_reducer = GradientSync()
    assert attach_moments_sync(learner.model) == (1 if task == "multiclass" else 2)
    # `auto`'s head mixture moves by the heads' losses summed over both ranks
    assert attach_loss_sync(learner.model) == (name == "auto")
    outcomes = []
    for (x, y, w), (a, _) in zip(_union_batches(task), SPLITS, strict=True):
        rows = slice(0, a) if rank == 0 else slice(a, None)
        result = learner.learn(x[rows], y[rows], w[rows])
        outcomes.append([float(result.loss), float(result.score_sum), result.samples])
        outcomes[-1].append(int(result.applied))
    out.mkdir(exist_ok=True)
    save_file(dict(learner.model.state_dict()), f"{out}/rank{rank}.safetensors")
    Path(f"{out}/rank{rank}.json").write_text(json.dumps(outcomes))


CASES = [(task, name) for task in sorted(SPECS) for name in ("mlp", "auto")]


def _ranks_main(rank: int, store: str, out: str) -> None:
    """Every case of this module in one group: two processes started once, not once a case
    (each start imports torch anew; the cases run one after the other, each from its own
    seed, so they are as independent as in processes of their own)."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        for task, name in CASES:
            _rank_case(rank, task, name, Path(out) / f"{task}-{name}")
        _sparse_rank_case(rank, Path(out) / "sparse")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of every case's two-rank results (``<task>-<name>/``, ``sparse/``)."""
    out = tmp_path_factory.mktemp("two_ranks")
    mp.start_processes(
        _ranks_main, args=(str(out / "store"), str(out)), nprocs=2, start_method="spawn"
    )
    return out


@pytest.mark.parametrize("name", ["mlp", "auto"])
@pytest.mark.parametrize("task", sorted(SPECS))
def test_two_rank_steps_equal_union_steps(task: str, name: str, two_ranks: Path) -> None:
    two_ranks = two_ranks / f"{task}-{name}"
    single = _learner(task, name)
    expected = []
    for x, y, w in _union_batches(task):
        result = single.learn(x, y, w)
        expected.append([float(result.loss), float(result.score_sum), result.samples])
        expected[-1].append(int(result.applied))
    want = single.model.state_dict()
    ranks = [load_file(str(two_ranks / f"rank{r}.safetensors")) for r in (0, 1)]
    for name, tensor in want.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between ranks"
        torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert int(ranks[0]["standardize.count"]) == sum(a + b for a, b in SPLITS[:POISONED_STEP])
    for r in (0, 1):
        got = json.loads((two_ranks / f"rank{r}.json").read_text())
        for step, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert g[2:] == e[2:], f"rank {r} step {step}: samples/applied {g[2:]} != {e[2:]}"
            if step != POISONED_STEP:
                assert g[:2] == pytest.approx(e[:2], rel=1e-5, abs=1e-6)
    assert [o[3] for o in expected] == [1, 1, 1, 0]  # the poisoned step was refused
    if name == "auto":  # the mix has moved, identically on both ranks (checked above)
        assert not torch.equal(want["head.mixer.losses"], torch.zeros(2))


def test_partitions_are_split_disjointly_and_deterministically() -> None:
    shares = [assign_partitions([3, 0, 2, 1, 4], r, 3) for r in range(3)]
    assert shares == [(0, 3), (1, 4), (2,)]
    with pytest.raises(PartitionShareError, match="3 trainer ranks but the samples topic has 2"):
        assign_partitions([0, 1], 0, 3)


# Embedding tables: sparse (row-wise) gradients gathered across ranks, Adagrad row state.
SPARSE_SPEC = SampleSpec(
    feature_shape=(3,),
    task="binary",
    sparse=(SparseFeature("user", "users", 2), SparseFeature("items", "items", 4)),
)
SPARSE_TABLES = {"rows": 40, "embedding_dim": 4}  # few rows: ranks' IDs collide on rows


def _sparse_learner() -> tuple[Learner, RowTracker]:
    torch.manual_seed(0)
    model = build_model("dlrm", SPARSE_SPEC, SPARSE_TABLES)
    opt = build_optimizer(model.parameters(), "adagrad", lr=0.1)
    tracker = RowTracker(model, opt, base_every_deltas=100, base_every_seconds=1e9)
    tracker.take()  # the first snapshot is a base; later takes list the rows stepped since
    return Learner(model, TaskHead(SPARSE_SPEC), opt), tracker


def _sparse_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Any]]]:
    """Union batches: dense x, labels, weights, and per sample its (user, items) ID lists."""
    g = torch.Generator().manual_seed(5)
    batches = []
    for a, b in SPLITS:
        n = a + b
        x = torch.randn(n, 3, generator=g)
        ids = [
            (
                torch.randint(0, 500, (1,), generator=g).tolist(),
                torch.randint(
                    0, 500, (int(torch.randint(0, 5, (1,), generator=g)),), generator=g
                ).tolist(),
            )
            for _ in range(n)
        ]
        y = (x[:, 0] > 0).long()
        batches.append((x, y, torch.rand(n, generator=g) + 0.5, ids))
    return batches


def _jagged(ids: list[Any]) -> dict[str, JaggedTensor]:
    return {
        "user": JaggedTensor.from_lists([user for user, _ in ids]),
        "items": JaggedTensor.from_lists([items for _, items in ids]),
    }


def _sparse_state(learner: Learner) -> dict[str, torch.Tensor]:
    """Weights plus Adagrad's per-element sums, by parameter name."""
    names = {id(p): n for n, p in learner.model.named_parameters()}
    state = dict(learner.model.state_dict())
    for p, s in learner.optimizer.state.items():
        state[f"adagrad_sum.{names[id(p)]}"] = s["sum"]
    return state


def _sparse_rank_case(rank: int, out: Path) -> None:
    learner, tracker = _sparse_learner()
    learner.step_reducer = GradientSync(sparse_embedding_weights(learner.model))
    attach_moments_sync(learner.model)
    samples = []
    for (x, y, w, ids), (a, _) in zip(_sparse_batches(), SPLITS, strict=True):
        rows = slice(0, a) if rank == 0 else slice(a, None)
        result = learner.learn(x[rows], y[rows], w[rows], _jagged(ids[rows]))
        samples.append([result.samples, int(result.applied), float(result.loss)])
    tracked = tracker.take()
    assert tracked is not None
    out.mkdir(exist_ok=True)
    save_file(_sparse_state(learner), f"{out}/rank{rank}.safetensors")
    save_file(tracked, f"{out}/rank{rank}.rows.safetensors")
    Path(f"{out}/rank{rank}.json").write_text(json.dumps(samples))


def test_two_rank_sparse_steps_equal_union_steps(two_ranks: Path) -> None:
    tmp_path = two_ranks / "sparse"
    single, tracker = _sparse_learner()
    expected = []
    for x, y, w, ids in _sparse_batches():
        result = single.learn(x, y, w, _jagged(ids))
        expected.append([result.samples, int(result.applied), float(result.loss)])
    want = _sparse_state(single)
    assert any(name.startswith("adagrad_sum.embeddings") for name in want)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for name, tensor in want.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between ranks"
        torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], rel=1e-5)
    # Every rank's tracker lists the rows of the union batches, not only its own batches'.
    union_rows = tracker.take()
    assert union_rows is not None
    for r in (0, 1):
        rows = load_file(str(tmp_path / f"rank{r}.rows.safetensors"))
        assert rows.keys() == union_rows.keys()
        for name, want_rows in union_rows.items():
            assert torch.equal(rows[name], want_rows), f"rank {r} tracked other rows of {name}"
    rank0_only = {
        row
        for (_, _, _, ids), (a, _) in zip(_sparse_batches(), SPLITS, strict=True)
        for user, _ in ids[:a]
        for row in hash_rows(torch.tensor(user), SPARSE_TABLES["rows"]).tolist()
    }
    users = union_rows["embeddings.tables.t_users.weight"].tolist()
    assert set(users) > rank0_only  # rows only rank 1 touched are in rank 0's delta
