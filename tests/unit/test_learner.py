"""The learning step: test-then-train, clipping, the non-finite guard and rollback."""

from __future__ import annotations

import copy

import pytest
import torch
from prometheus_client import Counter
from torch import nn

from streamtrain import metrics
from streamtrain.sample.spec import SampleSpec
from streamtrain.train.learner import Learner
from streamtrain.train.model_traits import train_mode_differs
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer, build_scheduler
from streamtrain.train.task import TaskHead
from tests.metrics_scrape import current

SPEC = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)


def _learner(params: dict[str, object] | None = None, **kwargs: object) -> Learner:
    torch.manual_seed(0)
    model = build_model("mlp", SPEC, params or {"hidden_sizes": [8]})
    opt = build_optimizer(model.parameters(), "sgd", lr=0.1)
    return Learner(model, TaskHead(SPEC), opt, **kwargs)  # type: ignore[arg-type]


def _batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x[:, :3].argmax(dim=1), torch.ones(n)


def _counter(counter: Counter) -> float:
    return current(counter)


def _weights(learner: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learner.model.parameters()]


def test_a_good_step_is_applied_and_counted() -> None:
    learner = _learner()
    before = _weights(learner)
    out = learner.learn(*_batch())
    assert out.applied and out.samples == 16
    assert out.loss.dim() == 0 and out.loss.isfinite()
    assert any(not torch.equal(a, b) for a, b in zip(before, _weights(learner), strict=True))


def test_prequential_score_is_of_the_weights_before_the_step() -> None:
    learner = _learner()
    x, y, w = _batch()
    frozen = copy.deepcopy(learner.model).eval()
    expected = (frozen(x).argmax(dim=1) == y).float().sum()
    out = learner.learn(x, y, w)
    assert out.score_sum.item() == expected.item()


def test_dropout_models_score_with_a_separate_eval_pass() -> None:
    learner = _learner({"hidden_sizes": [8], "dropout": 0.5})
    assert train_mode_differs(learner.model)
    x, y, w = _batch(64)
    frozen = copy.deepcopy(learner.model).eval()
    expected = (frozen(x).argmax(dim=1) == y).float().sum()
    out = learner.learn(x, y, w)
    assert out.score_sum.item() == expected.item()
    assert learner.model.training  # left in train mode


def test_non_finite_step_is_skipped_not_applied() -> None:
    learner = _learner()
    before = _weights(learner)
    skipped = _counter(metrics.TRAIN_SKIPPED_UPDATES)
    x, y, w = _batch()
    x[3, 1] = float("nan")
    out = learner.learn(x, y, w)
    assert not out.applied
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(learner), strict=True))
    assert all(p.grad is None for p in learner.model.parameters())
    assert _counter(metrics.TRAIN_SKIPPED_UPDATES) == skipped + 1


def test_a_rejected_step_leaves_the_running_statistics_as_they_were() -> None:
    learner = _learner({"hidden_sizes": [8], "standardize": True})
    for seed in range(3):
        assert learner.learn(*_batch(seed=seed)).applied
    stats = {k: v.clone() for k, v in learner.model.state_dict().items() if "standard" in k}
    assert stats, "the mlp has a standardiser"
    x, y, w = _batch(seed=9)
    x.fill_(3e38)  # finite rows (equal, so their variance is 0) that overflow the forward
    assert not learner.learn(x, y, w).applied
    after = learner.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())
    # so the next ordinary batch is learned, not spoiled by the huge one
    assert learner.learn(*_batch(seed=10)).applied


def test_repeated_bad_steps_roll_back_to_the_last_good_state() -> None:
    learner = _learner(max_bad_steps=3, good_state_every=2)
    for seed in range(5):
        learner.learn(*_batch(seed=seed))
    learner.snapshot_good_state()
    good = _weights(learner)
    with torch.no_grad():
        next(iter(learner.model.parameters())).fill_(float("inf"))  # a poisoned model
    rollbacks = _counter(metrics.TRAIN_ROLLBACKS)
    outcomes = [learner.learn(*_batch(seed=20 + i)) for i in range(3)]
    assert [o.applied for o in outcomes] == [False, False, False]
    assert _counter(metrics.TRAIN_ROLLBACKS) == rollbacks + 1
    assert all(torch.equal(a, b) for a, b in zip(good, _weights(learner), strict=True))
    assert learner.learn(*_batch(seed=30)).applied


def test_good_state_is_refreshed_every_n_good_steps_with_pre_step_weights() -> None:
    learner = _learner(max_bad_steps=1, good_state_every=3)
    learner.learn(*_batch(seed=0))
    learner.learn(*_batch(seed=1))
    before_third = _weights(learner)
    learner.learn(*_batch(seed=2))  # third good step: saves the weights it starts from
    learner.learn(*_batch(seed=3))
    x, y, w = _batch()
    x[0, 0] = float("inf")
    learner.learn(x, y, w)  # max_bad_steps=1: immediate rollback
    assert all(torch.equal(a, b) for a, b in zip(before_third, _weights(learner), strict=True))


def test_gradient_clipping_bounds_the_update() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    learner = Learner(
        model, TaskHead(SPEC), torch.optim.SGD(model.parameters(), lr=1.0), clip_grad_norm=0.01
    )
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    x, y, w = _batch()
    learner.learn(x * 1000, y, w)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(after - before).item() <= 0.01 + 1e-6


def test_empty_batch_does_nothing() -> None:
    learner = _learner()
    out = learner.learn(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert not out.applied and out.samples == 0
    assert learner.consecutive_bad_steps == 0


def test_scheduler_steps_with_applied_steps() -> None:
    torch.manual_seed(0)
    model = build_model("linear", SPEC)
    opt = build_optimizer(model.parameters(), "adam", lr=0.1)
    sched = build_scheduler(opt, "constant", schedule_steps=10, warmup_steps=4)
    learner = Learner(model, TaskHead(SPEC), opt, sched)
    assert learner.learning_rate == pytest.approx(0.025)
    learner.learn(*_batch())
    assert learner.learning_rate == pytest.approx(0.05)
    x, y, w = _batch()
    x[0, 0] = float("nan")
    assert not learner.learn(x, y, w).applied
    assert learner.learning_rate == pytest.approx(0.05)  # a skipped step does not advance it


def test_bf16_autocast_learns_on_cpu() -> None:
    learner = _learner(autocast_dtype=torch.bfloat16)
    out = learner.learn(*_batch())
    assert out.applied and out.loss.dtype == torch.float32


def test_learning_reduces_the_loss() -> None:
    learner = _learner()
    losses = [learner.learn(*_batch(64, seed=s % 4)).loss.item() for s in range(60)]
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5])


def test_fp16_autocast_uses_loss_scaling_and_still_guards() -> None:
    learner = _learner(autocast_dtype=torch.float16)
    assert learner.learn(*_batch()).applied
    x, y, w = _batch()
    x[0, 0] = float("nan")
    assert not learner.learn(x, y, w).applied
    assert learner.learn(*_batch()).applied


@pytest.mark.parametrize(
    ("module", "differs"),
    [
        (nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)), False),
        (nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)), True),
        (nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), True),
        (nn.LSTM(2, 2, num_layers=2, dropout=0.1), True),
        (nn.GRU(2, 2), False),
        (nn.TransformerEncoderLayer(4, 2, dropout=0.0), False),
        (nn.TransformerEncoderLayer(4, 2, dropout=0.1), True),
    ],
)
def test_train_mode_differs_detects_dropout_and_batch_norm(
    module: nn.Module, differs: bool
) -> None:
    assert train_mode_differs(module) is differs
