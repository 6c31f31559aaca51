"""Two gloo ranks with a dynamic table decide alike: each admits, evicts and resets from the
all-gathered IDs of the union batch, so both ranks end with the same mapping, counters, weights
and Adagrad rows, and the mapping equals one process's on the union batches."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from streamtrain.distributed.sparse_sync import sparse_embedding_weights
from streamtrain.distributed.step_sync import GradientSync, attach_moments_sync
from streamtrain.sample.sparse_torch import JaggedTensor
from streamtrain.train.learner import Learner
from streamtrain.train.models.dynamic_table import EMPTY
from tests.unit.test_dynamic_tables import _batches, _learner

STEPS = 24


def _state(learner: Learner) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in learner.model.named_parameters()}
    state = {k: v.detach().clone() for k, v in learner.model.state_dict().items()}
    for p, s in learner.optimizer.state.items():
        state[f"adagrad_sum.{names[id(p)]}"] = s["sum"].clone()
    return state


def _slice(sparse: dict[str, JaggedTensor], rows: slice) -> dict[str, JaggedTensor]:
    out = {}
    for name, t in sparse.items():
        bag = t.bag_index()
        out[name] = JaggedTensor.from_lists([t.ids[bag == i].tolist() for i in range(t.size)][rows])
    return out


def _rank_main(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        learner = _learner()
        learner.step_reducer = GradientSync(sparse_embedding_weights(learner.model))
        attach_moments_sync(learner.model)
        for step, (x, y, w, sparse) in enumerate(_batches(STEPS)):
            cut = [2, 5, 0, 3][step % 4]  # rank 1's slice is everything some steps
            rows = slice(0, cut) if rank == 0 else slice(cut, None)
            learner.learn(x[rows], y[rows], w[rows], _slice(sparse, rows))
        save_file(_state(learner), f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_ranks_make_the_same_admission_and_eviction_decisions(tmp_path: Path) -> None:
    mp.start_processes(
        _rank_main, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    single = _learner()
    owners: set[int] = set()
    for x, y, w, sparse in _batches(STEPS):
        single.learn(x, y, w, sparse)
        owners |= set(single.model.embeddings.mappings.t_items.slot_ids.tolist())
    assert len(owners - {EMPTY}) > 6, "the 6-row table should have re-owned rows"
    want = _state(single)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert int(want["embeddings.mappings.t_items.step"]) == STEPS
    for name, tensor in want.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between ranks"
        if tensor.dtype == torch.int64:  # every decision equals the union-batch process's
            assert torch.equal(ranks[0][name], tensor), name
        else:
            torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
