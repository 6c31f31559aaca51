"""The distributed step on NCCL: CUDA ranks all-reduce device gradients and moments.

Collected everywhere, run only where CUDA is present (conftest skips the folder otherwise).
One rank per GPU, at most two; with one GPU the group has one rank, which still runs every
NCCL collective of the step.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from streamtrain.distributed.step_sync import GradientSync, attach_moments_sync
from streamtrain.spec import SampleSpec
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead

SPEC = SampleSpec(feature_shape=(8,), task="multiclass", num_classes=3)


def _learner(device: torch.device) -> Learner:
    torch.manual_seed(0)
    model = build_model("mlp", SPEC, {"hidden_sizes": [16]}).to(device)
    opt = build_optimizer(model.parameters(), "adam", lr=0.05)
    return Learner(model, TaskHead(SPEC), opt, device=device)


def _batches(world: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(3):
        x = torch.randn(6 * world, 8, generator=g) * 2 + 1
        out.append((x, x[:, :3].argmax(dim=1), torch.rand(6 * world, generator=g) + 0.5))
    return out


def _rank_main(rank: int, world: int, store: str, out: str) -> None:
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        learner = _learner(device)
        learner.step_reducer = GradientSync()
        attach_moments_sync(learner.model)
        for x, y, w in _batches(world):
            rows = slice(6 * rank, 6 * (rank + 1))
            assert learner.learn(x[rows], y[rows], w[rows]).applied
        state = {
            k: v.detach().cpu().double().flatten().tolist()
            for k, v in learner.model.state_dict().items()
        }
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(state))
    finally:
        dist.destroy_process_group()


def test_nccl_ranks_step_like_one_process_on_the_union(tmp_path: Path) -> None:
    world = min(2, torch.cuda.device_count())
    mp.start_processes(
        _rank_main,
        args=(world, str(tmp_path / "store"), str(tmp_path)),
        nprocs=world,
        start_method="spawn",
    )
    single = _learner(torch.device("cuda", 0))
    for x, y, w in _batches(world):
        single.learn(x, y, w)
    for rank in range(world):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, tensor in single.model.state_dict().items():
            expected = torch.tensor(tensor.detach().cpu().double().flatten().tolist())
            torch.testing.assert_close(
                torch.tensor(got[name]), expected, rtol=1e-4, atol=1e-5, msg=name
            )
