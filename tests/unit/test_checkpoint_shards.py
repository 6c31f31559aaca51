"""Each rank's own files inside one checkpoint cut (a model with row-wise sharded tables)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from streamtrain.checkpoint import CheckpointStore, TrainerState, WorldSizeMismatch
from streamtrain.checkpoint.shards import stage_shard, staging_dir


def _parts(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # optimizer state to save
    return model, opt


def _state(step: int) -> TrainerState:
    return TrainerState(
        step=step,
        samples_seen=10,
        run_id="r",
        offsets={0: 5, 1: 5},
        model_settings={},
        extra={"world_size": 2},
    )


def _save(root: Path, step: int) -> tuple[CheckpointStore, torch.nn.Module, torch.nn.Module]:
    store = CheckpointStore(root, keep=2)
    rank0, opt0 = _parts(0)
    rank1, opt1 = _parts(1)  # another rank's shard: other weights, other optimizer rows
    digests = stage_shard(root, step, 1, rank1, opt1)
    store.save(
        _state(step), rank0, opt0, rank_digests={1: {f"rank-1/{k}": v for k, v in digests.items()}}
    )
    return store, rank0, rank1


def test_every_rank_restores_its_own_files_from_one_commit(tmp_path: Path) -> None:
    store, rank0, rank1 = _save(tmp_path, 7)
    meta = json.loads((tmp_path / "step-000000000007" / "meta.json").read_text())
    assert {"rank-1/model.safetensors", "rank-1/optimizer.json"} <= set(meta["files"])
    assert not staging_dir(tmp_path, 7, 1).exists()  # moved into the checkpoint
    for rank, want in ((0, rank0), (1, rank1)):
        model, opt = _parts(5)
        state = store.load_latest(model, opt, world_size=2, rank=rank)
        assert state is not None and state.step == 7
        assert torch.equal(model.weight, want.weight), f"rank {rank} read another rank's rows"
        assert opt.state[model.weight]["sum"].abs().sum() > 0


def test_a_torn_rank_file_makes_the_checkpoint_invalid_for_that_rank(tmp_path: Path) -> None:
    store, _, _ = _save(tmp_path, 3)
    (tmp_path / "step-000000000003" / "rank-1" / "model.safetensors").write_bytes(b"torn")
    model, opt = _parts(5)
    assert store.load_latest(model, opt, world_size=2, rank=1) is None  # skipped, with a WARNING


def test_another_world_size_is_refused_before_any_file_is_read(tmp_path: Path) -> None:
    store, _, _ = _save(tmp_path, 4)
    model, opt = _parts(5)
    before = model.weight.detach().clone()
    with pytest.raises(WorldSizeMismatch, match="written by 2 trainer rank"):
        store.load_latest(model, opt, world_size=1)
    assert torch.equal(model.weight, before)


def test_a_crashed_save_leaves_no_staging_behind(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    model, opt = _parts(1)
    stage_shard(tmp_path, 9, 1, model, opt)  # rank 0 died before committing step 9
    assert staging_dir(tmp_path, 9, 1).exists()
    assert store.load_latest(model, opt, world_size=2, rank=1) is None
    assert not staging_dir(tmp_path, 9, 1).exists()
