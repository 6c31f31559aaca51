"""The bad-step guard's verdicts and the in-place last-good state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from streamtrain.train.guard import BadStepGuard, GoodState, Verdict


def test_rollback_after_max_consecutive_bad_steps_and_count_restarts() -> None:
    guard = BadStepGuard(max_bad_steps=3)
    verdicts = [guard.judge(ok) for ok in (False, False, True, False, False, False, False)]
    assert verdicts == [
        Verdict.SKIP,
        Verdict.SKIP,
        Verdict.APPLY,
        Verdict.SKIP,
        Verdict.SKIP,
        Verdict.ROLLBACK,
        Verdict.SKIP,
    ]


def test_max_bad_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_bad_steps"):
        BadStepGuard(0)


def _model_and_adam() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    return model, torch.optim.Adam(model.parameters(), lr=0.1)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(8, 3)).pow(2).mean().backward()
    opt.step()


def test_restore_brings_back_params_buffers_and_optimizer_state_in_place() -> None:
    model, opt = _model_and_adam()
    _train_step(model, opt)
    good = GoodState(model, opt)
    good.save()
    expected_model = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(iter(model.parameters()))
    expected_avg = opt.state[first]["exp_avg"].clone()
    pointers = [p.data_ptr() for p in model.parameters()]
    for _ in range(3):
        _train_step(model, opt)
    good.restore()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected_model[key]), key
    assert torch.equal(opt.state[first]["exp_avg"], expected_avg)
    assert [p.data_ptr() for p in model.parameters()] == pointers


def test_save_reuses_its_buffers() -> None:
    model, opt = _model_and_adam()
    _train_step(model, opt)
    good = GoodState(model, opt)
    good.save()
    buffers = [t.data_ptr() for t in good._saved]
    _train_step(model, opt)
    good.save()
    assert [t.data_ptr() for t in good._saved] == buffers


def test_optimizer_state_created_after_the_save_is_dropped_on_restore() -> None:
    model, opt = _model_and_adam()
    good = GoodState(model, opt)
    good.save()  # before any step: Adam has no state yet
    _train_step(model, opt)
    assert opt.state
    good.restore()
    assert not opt.state


def test_restore_before_save_is_an_error() -> None:
    model, opt = _model_and_adam()
    with pytest.raises(RuntimeError, match="call save"):
        GoodState(model, opt).restore()
