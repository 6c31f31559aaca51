"""Adam with plain-SGD groups (train/sgd_groups.py): ``auto``'s linear head in one optimizer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from streamtrain.checkpoint import CheckpointStore, TrainerState
from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models import build_model
from streamtrain.train.models.auto import LinearAndMLP
from streamtrain.train.optim import build_optimizer, param_groups
from streamtrain.train.sgd_groups import AdamSGD, AdamWSGD

BINARY = SampleSpec(feature_shape=(4,), task="binary")


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    optimizer.step()


@pytest.mark.parametrize(("name", "cls"), [("adam", AdamSGD), ("adamw", AdamWSGD)])
def test_the_sgd_group_is_plain_sgd_and_the_rest_is_torchs_adam(name: str, cls: type) -> None:
    torch.manual_seed(1)
    model = build_model("auto", BINARY, {"linear_lr": 0.02})
    assert isinstance(model, LinearAndMLP)
    twin = build_model("auto", BINARY, {"linear_lr": 0.02})
    twin.load_state_dict(model.state_dict())
    optimizer = build_optimizer(param_groups(model, name), name, lr=0.01, weight_decay=0.1)  # type: ignore[arg-type]
    assert type(optimizer) is cls
    # the reference: torch's own Adam(W) on the MLP's parameters alone
    linear_ids = {id(p) for p in model.linear_head_parameters()}
    rest = [p for p in twin.parameters() if id(p) not in {id(q) for q in twin.wide.parameters()}]  # type: ignore[union-attr]
    plain = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(
        rest, lr=0.01, weight_decay=0.1, fused=True
    )
    for seed in range(3):
        before = {id(p): p.detach().clone() for p in model.parameters()}
        _step(model, optimizer, seed)
        _step(twin, plain, seed)
        for p in model.linear_head_parameters():
            assert p.grad is not None
            # p -= lr * grad (one fused multiply-add: equal to within a rounding)
            torch.testing.assert_close(
                p.detach(), before[id(p)] - 0.02 * p.grad, rtol=1e-5, atol=1e-9
            )
        for (key, mine), (_, theirs) in zip(
            model.state_dict().items(), twin.state_dict().items(), strict=True
        ):
            if not key.startswith("wide."):
                assert torch.equal(mine, theirs), f"{key}: the Adam group must be torch's Adam"
    assert all(id(p) not in optimizer.state for p in model.parameters() if id(p) in linear_ids)
    with pytest.raises(ValueError, match="closure"):
        optimizer.step(lambda: 0.0)


def test_a_checkpoint_of_the_old_adam_layout_is_refused_not_loaded_wrong(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # before: the linear head was a second Adam group (beta1 0, eps 1e3, lr scaled by 1e3)
    torch.manual_seed(2)
    old_model = build_model("auto", BINARY, {})
    assert isinstance(old_model, LinearAndMLP)
    linear = old_model.linear_head_parameters()
    ids = {id(p) for p in linear}
    old = torch.optim.Adam(
        [
            {"params": [p for p in old_model.parameters() if id(p) not in ids]},
            {"params": linear, "lr": 10.0, "betas": (0.0, 0.999), "eps": 1e3, "weight_decay": 0},
        ],
        lr=0.01,
    )
    _step(old_model, old, seed=0)
    state = TrainerState(step=1, samples_seen=1, run_id="r", offsets={0: 1}, model_settings={})
    CheckpointStore(tmp_path).save(state, old_model, old)

    model = build_model("auto", BINARY, {})
    optimizer = build_optimizer(param_groups(model, "adam"), "adam", lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        assert CheckpointStore(tmp_path).load_latest(model, optimizer) is None
    # the checkpoint names the optimizer class it was written with: refused, one line
    refusals = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(refusals) == 1 and "\n" not in refusals[0], caplog.text
    assert "'Adam'" in refusals[0] and "'AdamSGD'" in refusals[0]
    # nothing was loaded: the live model and optimizer are as they were
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.param_groups[1]["lr"] == 0.01 and optimizer.param_groups[1]["sgd"]
    assert not optimizer.state
    # an old state dict handed to the optimizer directly is refused too, before any change
    with pytest.raises(ValueError, match=r"parameter group 1 .* older streamtrain"):
        optimizer.load_state_dict(old.state_dict())
    assert optimizer.param_groups[1]["lr"] == 0.01 and not optimizer.state
