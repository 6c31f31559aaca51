"""A step of two gloo ranks equals one single-process step on the union of their batches.

Two real processes (torch.multiprocessing spawn) join a gloo group through a file store; each
learns from its own slice of every batch, one slice sometimes empty, one batch non-finite on one
rank only. The test compares their weights, standardisation statistics and outcomes with a
single process learning from the union batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from streamtrain.distributed.group import PartitionShareError, assign_partitions
from streamtrain.distributed.step_sync import GradientSync, attach_moments_sync
from streamtrain.spec import SampleSpec
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead

SPECS = {
    "multiclass": SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3),
    # regression built-ins also standardise the targets: a second all-gathered statistic
    "regression": SampleSpec(feature_shape=(4,), task="regression"),
}
# (rank 0's rows, rank 1's rows) of each union batch; rank 1's slice of step 2 is empty
SPLITS = [(5, 3), (4, 0), (2, 6), (3, 3)]
POISONED_STEP = 3  # rank 1's slice holds a NaN there: every rank must refuse the step


def _learner(task: str) -> Learner:
    torch.manual_seed(0)
    spec = SPECS[task]
    model = build_model("mlp", spec, {"hidden_sizes": [8]})
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


def _rank_main(rank: int, task: str, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        learner = _learner(task)
        learner.step_reducer = GradientSync()
        assert attach_moments_sync(learner.model) == (1 if task == "multiclass" else 2)
        outcomes = []
        for (x, y, w), (a, _) in zip(_union_batches(task), SPLITS, strict=True):
            rows = slice(0, a) if rank == 0 else slice(a, None)
            result = learner.learn(x[rows], y[rows], w[rows])
            outcomes.append([float(result.loss), float(result.score_sum), result.samples])
            outcomes[-1].append(int(result.applied))
        save_file(dict(learner.model.state_dict()), f"{out}/rank{rank}.safetensors")
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(outcomes))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("task", sorted(SPECS))
def test_two_rank_steps_equal_union_steps(task: str, tmp_path: Path) -> None:
    two_ranks = tmp_path
    mp.start_processes(
        _rank_main,
        args=(task, str(tmp_path / "store"), str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    single = _learner(task)
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


def test_partitions_are_split_disjointly_and_deterministically() -> None:
    shares = [assign_partitions([3, 0, 2, 1, 4], r, 3) for r in range(3)]
    assert shares == [(0, 3), (1, 4), (2,)]
    with pytest.raises(PartitionShareError, match="3 trainer ranks but the samples topic has 2"):
        assign_partitions([0, 1], 0, 3)
