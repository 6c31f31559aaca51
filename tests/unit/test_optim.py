"""Optimizers by name and step-addressable learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from streamtrain.train.optim import build_optimizer, build_scheduler, lr_factor


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("adagrad", torch.optim.Adagrad),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_every_optimizer_builds_and_steps(name: str, cls: type[torch.optim.Optimizer]) -> None:
    model = torch.nn.Linear(3, 1)
    opt = build_optimizer(model.parameters(), name, lr=0.1, weight_decay=0.01)  # type: ignore[arg-type]
    assert isinstance(opt, cls)
    before = model.weight.detach().clone()
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_momentum_on_an_optimizer_that_ignores_it_is_an_error() -> None:
    with pytest.raises(ValueError, match="applies to sgd and rmsprop"):
        build_optimizer(torch.nn.Linear(2, 1).parameters(), "adam", 0.1, momentum=0.9)


def test_warmup_is_linear_then_constant() -> None:
    f = lr_factor("constant", schedule_steps=100, warmup_steps=4)
    assert [f(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_restarts_every_period() -> None:
    f = lr_factor("cosine", schedule_steps=10, warmup_steps=0)
    assert f(0) == 1.0 and f(10) == 1.0
    assert f(5) == pytest.approx(0.5)
    assert f(9) < 0.05


def test_inverse_sqrt_decays_with_the_time_scale() -> None:
    f = lr_factor("inverse_sqrt", schedule_steps=100, warmup_steps=0)
    assert f(0) == 1.0
    assert f(300) == pytest.approx(0.5)
    assert f(100) == pytest.approx(1 / math.sqrt(2))


def test_unknown_schedule_is_an_error() -> None:
    with pytest.raises(ValueError, match="constant, cosine, step or inverse_sqrt"):
        lr_factor("linear", 10, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step", "inverse_sqrt"])
def test_resuming_at_a_step_matches_stepping_there(schedule: str) -> None:
    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.5)
        return opt, build_scheduler(opt, schedule, schedule_steps=7, warmup_steps=3)  # type: ignore[arg-type]

    walked_opt, walked = make()
    for _ in range(23):
        walked_opt.step()
        walked.step()
    resumed_opt, resumed = make()
    # what a checkpoint restores: both state dicts (a LambdaLR's holds no function)
    resumed_opt.load_state_dict(walked_opt.state_dict())
    resumed.load_state_dict(walked.state_dict())
    assert resumed_opt.param_groups[0]["lr"] == pytest.approx(walked_opt.param_groups[0]["lr"])
    assert resumed.get_last_lr() == pytest.approx(walked.get_last_lr())
    # and it keeps going in step afterwards
    walked_opt.step()
    walked.step()
    resumed_opt.step()
    resumed.step()
    assert resumed_opt.param_groups[0]["lr"] == pytest.approx(walked_opt.param_groups[0]["lr"])
