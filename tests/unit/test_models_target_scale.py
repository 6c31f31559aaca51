"""Regression target scaling: learned on the standardised scale, predicted in original units."""

from __future__ import annotations

import copy

import pytest
import torch

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.snapshot.payload import decode_state, encode_state
from streamtrain.testing import check_model
from streamtrain.train.learner import Learner
from streamtrain.train.models import MODEL_NAMES, build_model
from streamtrain.train.models.target_scale import TargetStandardize, find_target_scaler
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead
from streamtrain.train.weights import copy_weights

SPEC = SampleSpec(feature_shape=(3,), task="regression", target_dim=2)
SPECS = {
    "cnn": SampleSpec(feature_shape=(1, 4, 4), task="regression", target_dim=2),
    "rnn": SampleSpec(feature_shape=(4, 3), task="regression", target_dim=2),
    "transformer": SampleSpec(feature_shape=(4, 3), task="regression", target_dim=2),
}


def _stream(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets around 40 and 370 (weights in the hundreds), a few units of spread."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    y = torch.stack([40.0 + 3.0 * x[:, 0] - x[:, 1], 370.0 + 20.0 * x[:, 2]], dim=1)
    return x, y, torch.ones(n)


def _learner(params: dict[str, object] | None = None) -> Learner:
    torch.manual_seed(0)
    model = build_model("mlp", SPEC, params or {})
    return Learner(model, TaskHead(SPEC), build_optimizer(model.parameters(), "adam", 1e-3))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_builtin_scales_regression_targets_by_default(name: str) -> None:
    spec = SPECS.get(name, SPEC)
    assert isinstance(find_target_scaler(build_model(name, spec)), TargetStandardize)
    assert find_target_scaler(build_model(name, spec, {"scale_targets": False})) is None
    binary = SampleSpec(feature_shape=spec.feature_shape, task="binary")
    assert find_target_scaler(build_model(name, binary)) is None  # classification: no targets
    keys = {k for k in build_model(name, spec).state_dict() if k.startswith("head.targets.")}
    assert keys == {"head.targets.mean", "head.targets.var", "head.targets.count"}


def test_targets_are_learned_in_original_units_at_a_small_learning_rate() -> None:
    scaled, raw = _learner(), _learner({"scale_targets": False})
    errors: dict[str, float] = {}
    for name, learner in (("scaled", scaled), ("raw", raw)):
        total = 0.0
        for step in range(300):
            total += float(learner.learn(*_stream(8, seed=step)).score_sum)
        errors[name] = total / (300 * 8)
    # prequential MAE over the stream: raw Adam at 1e-3 never gets near 40 / 370
    assert errors["scaled"] < 15.0 < 150.0 < errors["raw"]
    scaled.model.eval()
    x, y, _ = _stream(256, seed=999)
    with torch.no_grad():
        predicted = scaled.model(x)
    assert float((predicted - y).abs().mean()) < 6.0
    torch.testing.assert_close(predicted.mean(0), y.mean(0), rtol=0.03, atol=0)


def test_the_loss_is_on_the_standardised_scale() -> None:
    learner = _learner()
    for step in range(50):
        learner.learn(*_stream(16, seed=step))
    outcome = learner.learn(*_stream(16, seed=100))
    # MSE of standardised targets: order 1, where the original units would give hundreds
    assert 0.0 < float(outcome.loss) < 5.0
    assert float(outcome.score_sum) / 16 > 1.0  # the score (MAE) stays in target units


def test_target_statistics_are_exact_and_skip_non_finite_batches() -> None:
    learner = _learner()
    x, y, w = _stream(64, seed=1)
    for start in range(0, 64, 8):
        learner.learn(x[start : start + 8], y[start : start + 8], w[start : start + 8])
    scaler = find_target_scaler(learner.model)
    assert scaler is not None and int(scaler.count) == 64
    torch.testing.assert_close(scaler.mean, y.mean(0))
    torch.testing.assert_close(scaler.var, y.var(0, correction=0), rtol=1e-4, atol=1e-4)
    before = {k: v.clone() for k, v in scaler.state_dict().items()}
    bad = y[:4].clone()
    bad[0, 0] = float("nan")
    assert not learner.learn(x[:4], bad, w[:4]).applied
    assert all(torch.equal(v, scaler.state_dict()[k]) for k, v in before.items())


def test_a_constant_target_predicts_the_constant() -> None:
    learner = _learner()
    x = torch.randn(32, 3)
    y = torch.full((32, 2), 42.0)
    for start in range(0, 32, 4):
        learner.learn(x[start : start + 4], y[start : start + 4], torch.ones(4))
    learner.model.eval()
    with torch.no_grad():
        predicted = learner.model(torch.randn(5, 3))
    assert bool(predicted.isfinite().all())
    # zero variance: scale 1, so the prediction is 42 plus the barely trained network's output
    assert float((predicted - 42.0).abs().max()) < 2.0


def test_a_model_with_a_target_scaler_deep_copies_after_learning() -> None:
    learner = _learner()
    learner.learn(*_stream(8, seed=0))
    clone = copy.deepcopy(learner.model)  # no hook or graph left behind on the model
    assert not clone.head.targets._forward_hooks


def test_snapshot_round_trip_serves_original_units() -> None:
    learner = _learner()
    for step in range(200):
        learner.learn(*_stream(16, seed=step))
    tensors, wait_ready = copy_weights(learner.model)
    wait_ready()
    payload, infos = encode_state(tensors)
    assert {"head.targets.mean", "head.targets.var", "head.targets.count"} <= {
        i.name for i in infos
    }
    torch.manual_seed(7)
    slot = WeightSlot(build_model("mlp", SPEC))  # a fresh server model: statistics empty
    slot.load(decode_state(payload), SnapshotHeader(1, "r"))
    probe, targets, _ = _stream(32, seed=500)
    learner.model.eval()
    with slot.acquire() as lease, torch.no_grad():
        served = lease.model(probe)
        expected = learner.model(probe)
    assert torch.equal(served, expected)
    assert float((served - targets).abs().mean()) < 10.0  # near 40 / 370, not near 0


@pytest.mark.parametrize("name", ["cnn", "rnn", "transformer"])
def test_sequence_and_image_builtins_pass_the_contract_on_regression(name: str) -> None:
    check_model(name, SPECS[name], steps=60)
