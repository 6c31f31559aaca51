"""Online standardisation: exact statistics, prequential scoring, state that travels."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.snapshot.payload import decode_state, encode_state
from streamtrain.testing import ToyStream, check_model
from streamtrain.train.learner import Learner
from streamtrain.train.model_traits import train_mode_differs
from streamtrain.train.models import MODEL_NAMES, build_model
from streamtrain.train.models.standardize import OnlineStandardize
from streamtrain.train.optim import build_optimizer
from streamtrain.train.task import TaskHead
from streamtrain.train.weights import copy_weights

TABULAR = SampleSpec(feature_shape=(5,), task="regression", target_dim=1)
SEQ = SampleSpec(feature_shape=(6, 4), task="multiclass", num_classes=3)
IMAGE = SampleSpec(feature_shape=(2, 8, 8), task="multiclass", num_classes=3)
SPECS = {
    "auto": TABULAR,
    "linear": TABULAR,
    "mlp": TABULAR,
    "cnn": IMAGE,
    "rnn": SEQ,
    "transformer": SEQ,
}
DEFAULT_ON = dict.fromkeys(MODEL_NAMES, True)


def _stream(n: int, features: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 100.0, 0.1])[:features]
    return torch.randn(n, features, generator=gen) * scale + torch.arange(features) * 5.0


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_cumulative_statistics_equal_the_whole_stream_moments(batch: int) -> None:
    data = _stream(300)
    layer = OnlineStandardize((3,))
    for start in range(0, len(data), batch):
        layer(data[start : start + batch])
    assert int(layer.count) == 300
    torch.testing.assert_close(layer.mean, data.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.var, data.var(0, correction=0), rtol=1e-4, atol=1e-6)


def test_double_precision_statistics() -> None:
    data = _stream(100).double()
    layer = OnlineStandardize((3,)).double()
    for start in range(0, 100, 10):
        layer(data[start : start + 10])
    assert layer.mean.dtype == torch.float64
    torch.testing.assert_close(layer.mean, data.mean(0))


def test_eval_mode_normalises_without_learning() -> None:
    layer = OnlineStandardize((3,))
    layer(_stream(2000))
    layer.eval()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    out = layer(_stream(200, seed=1) * 3)
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())
    # fresh data from the same distribution comes out standardised
    again = layer(_stream(2000, seed=2))
    torch.testing.assert_close(again.mean(0), torch.zeros(3), atol=0.1, rtol=0)
    torch.testing.assert_close(again.std(0), torch.ones(3), atol=0.1, rtol=0)
    assert out.shape == (200, 3)


def test_momentum_forgets_an_old_distribution_and_ignores_batch_size() -> None:
    old, new = torch.zeros(2000, 1), torch.full((2000, 1), 10.0)
    means = {}
    for batch in (1, 50):
        layer = OnlineStandardize((1,), momentum=0.01)
        for data in (old, new):
            for start in range(0, len(data), batch):
                layer(data[start : start + batch])
        means[batch] = float(layer.mean)
    cumulative = OnlineStandardize((1,))
    cumulative(old)
    cumulative(new)
    assert float(cumulative.mean) == pytest.approx(5.0)
    # 2000 samples at 1% per sample: the old mean's weight is (0.99)^2000, about 2e-9
    assert means[1] == pytest.approx(10.0, abs=1e-3)
    assert means[50] == pytest.approx(10.0, abs=1e-3)


def test_momentum_starts_cumulative() -> None:
    layer = OnlineStandardize((1,), momentum=0.001)
    layer(torch.tensor([[2.0]]))
    layer(torch.tensor([[4.0]]))
    # an EMA from the zero init would sit near 0.006; warm-up averages the two samples
    assert float(layer.mean) == pytest.approx(3.0)


def test_a_non_finite_batch_is_not_folded_in() -> None:
    layer = OnlineStandardize((3,))
    layer(_stream(50))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    bad = _stream(4, seed=3)
    bad[1, 2] = float("nan")
    layer(bad)
    bad[1, 2] = float("inf")
    layer(bad)
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())
    layer(_stream(5, seed=4))
    assert int(layer.count) == 55 and bool(layer.var.isfinite().all())


def test_shared_dims_give_one_statistic_per_channel() -> None:
    layer = OnlineStandardize((2, 4, 4), shared_dims=(1, 2))
    x = torch.randn(10, 2, 4, 4) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    layer(x)
    assert layer.mean.shape == (2, 1, 1)
    torch.testing.assert_close(
        layer.var.flatten(), x.transpose(0, 1).flatten(1).var(1, correction=0)
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_and_statistics_shape_per_builtin(name: str) -> None:
    spec = SPECS[name]
    model = build_model(name, spec)
    has = any(isinstance(m, OnlineStandardize) for m in model.modules())
    assert has is DEFAULT_ON[name]
    on = build_model(name, spec, {"standardize": True})
    layer = on.get_submodule("standardize")
    assert isinstance(layer, OnlineStandardize) and layer.momentum == 0.001
    cumulative = build_model(name, spec, {"standardize": True, "standardize_momentum": None})
    assert cumulative.get_submodule("standardize").momentum is None
    keys = {k for k in on.state_dict() if k.startswith("standardize.")}
    assert keys == {"standardize.mean", "standardize.var", "standardize.count"}
    shape = tuple(on.state_dict()["standardize.mean"].shape)
    want = {"cnn": (2, 1, 1), "rnn": (1, 4), "transformer": (1, 4)}.get(name, (5,))
    assert shape == want
    off = build_model(name, spec, {"standardize": False})
    assert not any(k.startswith("standardize.") for k in off.state_dict())


def test_bad_momentum_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"standardize_momentum: Input should be less than 1"):
        build_model("linear", TABULAR, {"standardize_momentum": 1.5})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builtin_passes_the_contract_with_the_non_default(name: str) -> None:
    spec = {"cnn": SampleSpec(feature_shape=(1, 8, 8), task="multiclass", num_classes=10)}.get(
        name, SPECS[name]
    )
    params: dict[str, Any] = {"standardize": not DEFAULT_ON[name]}
    if name == "cnn":
        params |= {"channels": [8, 16], "hidden_size": 32}
    check_model(name, spec, params, steps=60)


def test_contract_with_cumulative_statistics_and_dropout() -> None:
    spec = SampleSpec(feature_shape=(16,), task="multiclass", num_classes=3)
    check_model("mlp", spec, {"standardize_momentum": None, "dropout": 0.2}, steps=60)


def _score_with_frozen_copy(
    model: nn.Module, head: TaskHead, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    frozen = copy.deepcopy(model).eval()
    with torch.no_grad():
        return head.score(frozen(x), y).sum()


@pytest.mark.parametrize("params", [{}, {"dropout": 0.3}], ids=["one-pass", "eval-pass"])
def test_prequential_score_uses_the_statistics_from_before_the_batch(
    params: dict[str, Any],
) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", TABULAR, {"hidden_sizes": [8], **params})
    assert train_mode_differs(model) is bool(params)  # the standardiser alone needs no eval pass
    head = TaskHead(TABULAR)
    learner = Learner(model, head, build_optimizer(model.parameters(), "adam", lr=1e-2))
    stream = ToyStream(TABULAR, seed=1)
    for _ in range(5):
        learner.learn(*stream.batch(16))
    x, y, w = stream.batch(16)
    x = x * 4 + 3  # a shifted batch: its own statistics would move the normalisation a lot
    expected = _score_with_frozen_copy(model, head, x, y)
    leaky = copy.deepcopy(model)
    leaky.get_submodule("standardize").train()(x)  # what a leak would do: fold the batch in
    # the test can tell the two apart: with the batch's own statistics the score differs
    assert not torch.allclose(_score_with_frozen_copy(leaky, head, x, y), expected, rtol=1e-3)
    count = int(model.state_dict()["standardize.count"])
    outcome = learner.learn(x, y, w)
    torch.testing.assert_close(outcome.score_sum, expected, rtol=1e-6, atol=1e-6)
    assert int(model.state_dict()["standardize.count"]) == count + 16  # folded in exactly once


def test_snapshot_round_trip_carries_the_statistics_to_serving() -> None:
    torch.manual_seed(3)
    trainer_model = build_model("linear", TABULAR)
    trainer_model(torch.randn(64, 5) * 7 + 2)  # a training-mode forward learns the statistics
    tensors, wait_ready = copy_weights(trainer_model)
    wait_ready()
    payload, infos = encode_state(tensors)
    assert {"standardize.mean", "standardize.var", "standardize.count"} <= {i.name for i in infos}
    torch.manual_seed(4)
    slot = WeightSlot(build_model("linear", TABULAR))
    slot.load(decode_state(payload), SnapshotHeader(1, "r"))
    probe = torch.randn(9, 5) * 7 + 2
    trainer_model.eval()
    with slot.acquire() as lease, torch.no_grad():
        served = lease.model(probe)
        state = lease.model.state_dict()
        expected = trainer_model(probe)
    assert torch.equal(state["standardize.mean"], trainer_model.state_dict()["standardize.mean"])
    assert int(state["standardize.count"]) == 64
    assert torch.equal(served, expected)


@pytest.mark.parametrize("momentum", [None, 0.001])
def test_statistics_are_exact_from_the_first_sample(momentum: float | None) -> None:
    """One sample at a time, as river's StandardScaler: after each sample the statistics are
    numpy's mean and population variance of the prefix (momentum 0.001 is cumulative for its
    first 1000 samples), and each sample is scaled by the statistics of the samples before it.
    """
    rng = np.random.default_rng(5)
    # very different scales, one of them a date ordinal (values ~7e5, std ~100)
    data = rng.normal([0.0, 50.0, 736_389.0], [1e-3, 10.0, 100.0], size=(400, 3))
    data = data.astype(np.float32).astype(np.float64)  # what a float32 record carries
    layer = OnlineStandardize((3,), momentum=momentum)
    for i, row in enumerate(data):
        out = layer(torch.tensor(row[None], dtype=torch.float32))[0].double().numpy()
        if i == 0:
            assert np.array_equal(out, np.zeros(3))  # nothing known yet: every feature flat
        else:
            before = data[:i]
            want = (row - before.mean(0)) / before.std(0) if i > 1 else np.zeros(3)
            np.testing.assert_allclose(out, want, rtol=2e-3, atol=2e-3)
        # float32 statistics: the variance within 0.2%, the mean within 3e-3 standard
        # deviations (a float32 mean near the ordinal is spaced 0.0625 apart, 6e-4 of its
        # std, and rounding adds up over updates)
        prefix, spread = data[: i + 1], data.std(0)
        mean_error = np.abs(layer.mean.double().numpy() - prefix.mean(0)) / spread
        assert float(mean_error.max()) < 3e-3
        np.testing.assert_allclose(
            layer.var.double().numpy(), prefix.var(0), rtol=2e-3, atol=1e-6 * spread.min() ** 2
        )


def test_a_constant_then_moving_feature_stays_finite_and_bounded() -> None:
    layer = OnlineStandardize((2,), momentum=0.001)
    moving = torch.linspace(0, 1, 3000)
    outputs = []
    for i in range(3000):
        stuck = 5.0 if i < 1500 else 5.0 + float(moving[i])  # constant, then it moves
        row = torch.tensor([[float(moving[i]), stuck]])
        outputs.append(layer(row)[0, 1])
    out = torch.stack(outputs)
    assert bool(out.isfinite().all())
    assert bool((out[:1501] == 0).all())  # constant so far, and its first move, contribute 0
    # bounded by the momentum window, sqrt(1/m) ~ 32, not 1/sqrt(eps) ~ 316 x the move
    assert float(out.abs().max()) <= (1 / 0.001) ** 0.5 + 1


def test_two_identical_samples_give_a_sane_prediction() -> None:
    torch.manual_seed(0)
    spec = SampleSpec(feature_shape=(3,), task="binary")
    model = build_model("linear", spec)
    learner = Learner(model, TaskHead(spec), build_optimizer(model.parameters(), "adam", 1e-2))
    x = torch.tensor([[736_389.0, 0.5, -3.0]])
    learner.learn(x, torch.tensor([1]), torch.ones(1))
    learner.learn(x, torch.tensor([1]), torch.ones(1))
    model.eval()
    with torch.no_grad():
        probability = torch.sigmoid(model(x))
    assert 0.01 < float(probability) < 0.99


def test_a_served_forward_keeps_its_scale_until_the_statistics_change() -> None:
    layer = OnlineStandardize((3,))
    layer(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 9.0]]))  # learn; feature 1 is flat
    layer.eval()
    x = torch.tensor([[2.0, 5.0, 1.0]])

    def expected() -> torch.Tensor:
        return (x - layer.mean) * layer.inverse_std(flat=0.0)

    with torch.inference_mode():
        first = layer(x)
        kept = layer._kept_scale
        again = layer(x)
    assert torch.equal(first, expected()) and torch.equal(again, first)
    assert kept is not None and layer._kept_scale is kept  # kept while the statistics stand
    with torch.no_grad():  # a swap writes the statistics in place
        layer.var.copy_(torch.tensor([4.0, 4.0, 4.0]))
    with torch.inference_mode():
        swapped = layer(x)
    assert torch.equal(swapped, expected()) and float(swapped[0, 1]) == 1.5
    layer.mean = torch.tensor([0.0, 0.0, 0.0])  # new tensors too
    with torch.inference_mode():
        assert torch.equal(layer(x), expected())
    layer.train()  # training forwards never use the kept scale (and then learn from x)
    before = expected()
    assert torch.equal(layer(x), before)


def test_a_served_forward_of_statistics_made_under_inference_mode_is_still_answered() -> None:
    """Buffers created under ``torch.inference_mode`` have no version counter to key the kept
    scale on: the forward computes the scale afresh instead of failing."""
    layer = OnlineStandardize((3,), momentum=0.5)
    with torch.no_grad():
        layer(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    layer.eval()
    with torch.inference_mode():
        fresh = OnlineStandardize((3,), momentum=0.5)
        fresh.load_state_dict(layer.state_dict())
        fresh.eval()
        x = torch.tensor([[2.0, 0.0, 1.0]])
        assert fresh.mean.is_inference()
        assert torch.equal(fresh(x), layer(x))
