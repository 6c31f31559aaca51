"""Optimizer steps are not fetched batches: the step rule splits a batch into steps."""

from __future__ import annotations

import pytest
import torch

from streamtrain.config import ConfigError, load_settings
from streamtrain.sample.spec import SampleSpec
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer, build_scheduler
from streamtrain.train.step_size import StepSamples, max_step_samples
from streamtrain.train.task import TaskHead

SPEC = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)


def _learner(rule: StepSamples) -> Learner:
    torch.manual_seed(0)
    model = build_model("mlp", SPEC, {"hidden_sizes": [8]})
    opt = build_optimizer(model.parameters(), "adam", lr=1e-2)
    sched = build_scheduler(opt, "constant", schedule_steps=10, warmup_steps=0)
    return Learner(model, TaskHead(SPEC), opt, sched, step_samples=rule)


def _batch(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x[:, :3].argmax(dim=1), torch.ones(n)


def _state(learner: Learner) -> list[torch.Tensor]:
    return [t.detach().clone() for t in learner.model.state_dict().values()]


def test_the_auto_rule_doubles_every_256_steps() -> None:
    assert [max_step_samples("auto", s) for s in (0, 255, 256, 384, 512, 2048)] == [
        1,
        1,
        2,
        2,
        4,
        256,
    ]
    assert max_step_samples("batch", 10**6) is None
    assert max_step_samples(7, 0) == 7
    with pytest.raises(ValueError, match="step_samples must be 'auto', 'batch'"):
        max_step_samples(0, 0)


def test_auto_at_the_start_learns_exactly_as_one_sample_per_batch() -> None:
    x, y, w = _batch(64)
    split, single = _learner("auto"), _learner("batch")
    scores = []
    for start in range(0, 64, 16):  # four fetched batches of 16
        out = split.learn(x[start : start + 16], y[start : start + 16], w[start : start + 16])
        assert out.applied and out.steps == 16 and out.samples == 16
        scores.append(out.score_sum)
    one_by_one = [single.learn(x[i : i + 1], y[i : i + 1], w[i : i + 1]) for i in range(64)]
    assert all(torch.equal(a, b) for a, b in zip(_state(split), _state(single), strict=True))
    assert float(torch.stack(scores).sum()) == sum(float(o.score_sum) for o in one_by_one)
    assert split.scheduler is not None and split.scheduler.last_epoch == 64


def test_a_fixed_step_size_and_one_step_per_batch() -> None:
    x, y, w = _batch(10)
    assert _learner(4).learn(x, y, w).steps == 3  # 4 + 4 + 2
    assert _learner("batch").learn(x, y, w).steps == 1


def test_the_split_follows_the_restored_schedule() -> None:
    learner = _learner("auto")
    assert learner.scheduler is not None
    state = learner.scheduler.state_dict() | {"last_epoch": 512}  # as a checkpoint restores it
    learner.scheduler.load_state_dict(state)
    assert learner.learn(*_batch(10)).steps == 3  # steps of at most 4 samples: 4 + 4 + 2


def test_the_setting_is_validated() -> None:
    assert load_settings().optimizer.step_samples == "auto"
    assert load_settings(overrides={"optimizer": {"step_samples": 32}}).optimizer.step_samples == 32
    with pytest.raises(ConfigError, match="step_samples"):
        load_settings(overrides={"optimizer": {"step_samples": 0}})
    with pytest.raises(ConfigError, match="step_samples"):
        load_settings(overrides={"optimizer": {"step_samples": "sometimes"}})
