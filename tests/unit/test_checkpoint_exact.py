"""Restoring a checkpoint and continuing must be bit-identical to never having stopped."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, StepLR

from streamtrain.checkpoint import CheckpointStore, TrainerState

OptFactory = Callable[[list[nn.Parameter]], Optimizer]

OPTIMIZERS: dict[str, OptFactory] = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, amsgrad=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, lr_decay=0.01),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
}


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1234)
    return [
        (torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen))
        for _ in range(n)
    ]


def _train(
    model: nn.Module,
    opt: Optimizer,
    sched: LRScheduler | None,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    model.train()
    for x, y in batches:
        # Draw from numpy's and Python's global RNGs too, as augmentation code would.
        noise = np.random.normal(size=x.shape).astype(np.float32) * 0.01
        scale = 1.0 + random.random() * 0.01
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x * scale + torch.from_numpy(noise)), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if sched is not None:
            sched.step()


def _assert_same(a: object, b: object, where: str = "") -> None:
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple))
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def _state() -> TrainerState:
    return TrainerState(step=3, samples_seen=24, run_id="r", offsets={0: 24}, model_settings={})


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_state_roundtrips_exactly(name: str, tmp_path: Path) -> None:
    model = _model(0)
    opt = OPTIMIZERS[name](list(model.parameters()))
    _train(model, opt, None, _batches(3))
    CheckpointStore(tmp_path).save(_state(), model, opt)

    fresh = _model(99)
    fresh_opt = OPTIMIZERS[name](list(fresh.parameters()))
    assert CheckpointStore(tmp_path).load_latest(fresh, fresh_opt) is not None

    _assert_same(opt.state_dict(), fresh_opt.state_dict(), name)
    _assert_same(model.state_dict(), fresh.state_dict(), "model")
    if name.startswith("adam"):
        # Recent torch keeps Adam's step as a tensor; it must come back as one.
        assert isinstance(fresh_opt.state_dict()["state"][0]["step"], torch.Tensor)


def _lambda_sched(opt: Optimizer) -> LRScheduler:
    return LambdaLR(opt, lambda epoch: 0.95**epoch)


def _step_sched(opt: Optimizer) -> LRScheduler:
    return StepLR(opt, step_size=2, gamma=0.5)


@pytest.mark.parametrize(
    ("opt_name", "make_sched"),
    [("adam", _lambda_sched), ("sgd_momentum", _step_sched), ("rmsprop", None)],
)
def test_restore_and_continue_is_bit_identical(
    opt_name: str, make_sched: Callable[[Optimizer], LRScheduler] | None, tmp_path: Path
) -> None:
    k, m = 4, 5
    batches = _batches(k + m)

    def objects(seed: int) -> tuple[nn.Module, Optimizer, LRScheduler | None]:
        model = _model(seed)
        opt = OPTIMIZERS[opt_name](list(model.parameters()))
        return model, opt, (make_sched(opt) if make_sched else None)

    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    model, opt, sched = objects(0)
    _train(model, opt, sched, batches[:k])
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(_state(), model, opt, sched)
    _train(model, opt, sched, batches[k:])  # the uninterrupted run: W1

    # A "restarted process": different init, RNGs elsewhere.
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    model2, opt2, sched2 = objects(42)
    restored = CheckpointStore(tmp_path / "ckpt").load_latest(model2, opt2, sched2)
    assert restored is not None and restored.step == 3
    _train(model2, opt2, sched2, batches[k:])  # W2

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, model2.state_dict()[name]), name
    _assert_same(opt.state_dict(), opt2.state_dict(), "optimizer")
    if sched is not None:
        assert sched2 is not None
        assert sched.get_last_lr() == sched2.get_last_lr()
        assert sched.last_epoch == sched2.last_epoch == k + m


def test_without_rng_restore_dropout_diverges(tmp_path: Path) -> None:
    """The control for the test above: skipping the RNG restore must change the result."""
    batches = _batches(4)
    torch.manual_seed(1)
    model = _model(0)
    opt = OPTIMIZERS["adam"](list(model.parameters()))
    store = CheckpointStore(tmp_path)
    store.save(_state(), model, opt)
    _train(model, opt, None, batches)

    torch.manual_seed(2)
    model2 = _model(0)
    opt2 = OPTIMIZERS["adam"](list(model2.parameters()))
    assert store.load_latest(model2, opt2, restore_rng=False) is not None
    _train(model2, opt2, None, batches)
    assert not all(
        torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True)
    )
