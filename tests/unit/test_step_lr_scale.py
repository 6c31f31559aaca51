"""Under step_samples auto a step's learning rate grows with its samples (step_size.py)."""

from __future__ import annotations

import math

import pytest
import torch

from streamtrain.builders.trainer import _learner
from streamtrain.config import load_settings
from streamtrain.sample.spec import SampleSpec, spec_for_model
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer, param_groups, step_lr_scales
from streamtrain.train.step_size import LR_SCALE_MAX_SAMPLES, step_lr_scale
from streamtrain.train.task import TaskHead

SPEC = SampleSpec(feature_shape=(3,), task="binary")


def test_the_scale_is_the_root_or_the_count_of_the_samples_up_to_the_cap() -> None:
    assert [step_lr_scale("sqrt", m) for m in (1, 4, 9)] == [1.0, 2.0, 3.0]
    assert [step_lr_scale("sum", m) for m in (1, 5, 16)] == [1.0, 5.0, 16.0]
    cap = LR_SCALE_MAX_SAMPLES
    assert step_lr_scale("sum", 10 * cap) == cap
    assert step_lr_scale("sqrt", 10 * cap) == math.sqrt(cap)
    assert step_lr_scale("sqrt", 0) == 1.0  # an empty step is never scaled down to nothing
    with pytest.raises(ValueError, match="sqrt or sum"):
        step_lr_scale("cube", 4)  # type: ignore[arg-type]


def test_only_the_auto_rule_scales_and_the_linear_head_by_the_count() -> None:
    auto = build_model("auto", SPEC, {})
    mlp = build_model("mlp", SPEC, {})
    auto_scales = step_lr_scales(auto, "adam", "auto")
    mlp_scales = step_lr_scales(mlp, "adam", "auto")
    assert auto_scales is not None and mlp_scales is not None
    assert auto_scales(9) == [3.0, 9.0]  # the rest by sqrt(m), the SGD linear head by m
    assert mlp_scales(9) == [3.0]
    # a linear head that shares Adam with the MLP (linear_lr None) is one group: sqrt only
    shared = step_lr_scales(build_model("auto", SPEC, {"linear_lr": None}), "adam", "auto")
    assert shared is not None and shared(9) == [3.0]
    assert step_lr_scales(auto, "adam", "batch") is None
    assert step_lr_scales(auto, "adam", 16) is None


def _auto_learner(scaled: bool) -> Learner:
    torch.manual_seed(3)
    model = build_model("auto", SPEC, {})
    optimizer = build_optimizer(param_groups(model, "adam"), "adam", lr=0.01)
    scales = step_lr_scales(model, "adam", "auto") if scaled else None
    return Learner(model, TaskHead(SPEC), optimizer, step_samples="batch", step_lr_scales=scales)


def _moved(learner: Learner, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    before = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    assert learner.learn(x, y, torch.ones(len(y))).applied
    return {k: v.detach() - before[k] for k, v in learner.model.named_parameters()}


def test_a_step_of_four_moves_the_linear_head_four_times_and_adam_twice() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 3, generator=g)
    y = (x[:, 0] > 0).long()
    scaled, plain = _auto_learner(True), _auto_learner(False)
    for i in range(8):  # single-sample steps (unscaled) give the standardiser its statistics
        for learner in (scaled, plain):
            learner.learn(x[i : i + 1], y[i : i + 1], torch.ones(1))
    moved, base = _moved(scaled, x[8:], y[8:]), _moved(plain, x[8:], y[8:])
    for name in ("wide.weight", "wide.bias"):  # plain SGD: the sum of the per-sample steps
        assert base[name].abs().sum() > 0
        torch.testing.assert_close(moved[name], 4 * base[name])
    for name in ("first.weight", "deep.weight"):  # Adam at sqrt(4) times the rate
        torch.testing.assert_close(moved[name], 2 * base[name])
    # the scaled rate was the step's only: the optimizer keeps the scheduled one
    assert [group["lr"] for group in scaled.optimizer.param_groups] == [
        group["lr"] for group in plain.optimizer.param_groups
    ]


def test_a_single_sample_step_is_not_scaled() -> None:
    x, y = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([1])
    scaled, plain = _auto_learner(True), _auto_learner(False)
    moved, base = _moved(scaled, x, y), _moved(plain, x, y)
    assert all(torch.equal(moved[name], base[name]) for name in base)


def test_the_trainer_scales_its_steps_with_the_default_rule_only() -> None:
    settings = load_settings(overrides={"model": {"name": "auto", "input_shape": [3]}})
    spec = spec_for_model(settings.model)
    learner = _learner(settings, spec, torch.device("cpu"))
    assert learner.step_lr_scales is not None and learner.step_lr_scales(4) == [2.0, 4.0]
    fixed = settings.model_copy(
        update={"optimizer": settings.optimizer.model_copy(update={"step_samples": "batch"})}
    )
    assert _learner(fixed, spec, torch.device("cpu")).step_lr_scales is None
