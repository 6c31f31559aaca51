"""The parts of an ``auto`` step made cheaper: the learner's input capture, the kept log weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.guard import GoodState
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.models.hedge import HedgeMixer, find_mixer
from streamtrain.train.models.target_scale import find_target_scaler
from streamtrain.train.objective import Objective
from streamtrain.train.optim import build_optimizer, param_groups
from streamtrain.train.task import TaskHead

BINARY = SampleSpec(feature_shape=(4,), task="binary")
REGRESSION = SampleSpec(feature_shape=(4,), task="regression")


def _mixer(model: nn.Module) -> HedgeMixer:
    mixer = find_mixer(model)
    assert mixer is not None
    return mixer


def _fresh_log_weights(mixer: HedgeMixer) -> torch.Tensor:
    return torch.log_softmax(-mixer.eta * mixer.losses, dim=0)


def _learner(spec: SampleSpec) -> Learner:
    torch.manual_seed(3)
    model = build_model("auto", spec, {})
    optimizer = build_optimizer(param_groups(model, "adam"), "adam", lr=0.01)
    return Learner(model, TaskHead(spec), optimizer, step_samples="batch")


def _labels(spec: SampleSpec, x: torch.Tensor) -> torch.Tensor:
    score = x[:, 0] - x[:, 1]
    return (score > 0).long() if spec.task == "binary" else score[:, None] * 3 + 10


@pytest.mark.parametrize("spec", [BINARY, REGRESSION], ids=["binary", "regression"])
def test_a_trained_model_keeps_no_captured_input_and_deep_copies(spec: SampleSpec) -> None:
    learner = _learner(spec)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(4, 4, generator=g)
        learner.learn(x, _labels(spec, x), torch.ones(4))
    layers = [_mixer(learner.model), find_target_scaler(learner.model)]
    # between steps no layer holds the graph of the last forward (a deep copy would refuse a
    # non-leaf tensor), and the learner's capture slot is taken back
    assert all(layer is None or layer._input_slot is None for layer in layers)
    twin = copy.deepcopy(learner.model)
    x = torch.randn(8, 4, generator=g)
    learner.model.eval()
    twin.eval()
    with torch.no_grad():
        assert torch.equal(twin(x), learner.model(x))


def test_a_mixer_that_runs_twice_in_one_forward_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mixer = HedgeMixer(2, BINARY, eta=1.0, window=10)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            self.mixer(*z.unbind(-1))
            out: torch.Tensor = self.mixer(*z.unbind(-1))
            return out

    model = Twice()
    objective = Objective(model, TaskHead(BINARY))
    with pytest.raises(RuntimeError, match="ran twice"), objective.capture():
        model(torch.zeros(3, 1, 2))
    # and the slot is not left on the layer
    assert model.mixer._input_slot is None


def test_the_kept_log_weights_follow_every_change_of_the_losses() -> None:
    model = build_model("auto", BINARY, {})
    mixer = _mixer(model)
    first = mixer.log_weights()
    assert mixer.log_weights() is first  # kept while the losses stay as they are
    mixer.observe(torch.tensor([0.0, 3.0]), samples=4)  # a step moves the weights
    assert torch.equal(mixer.log_weights(), _fresh_log_weights(mixer))
    assert mixer.log_weights()[0] > first[0]
    good = GoodState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    good.save()
    mixer.observe(torch.tensor([5.0, 0.0]), samples=4)
    moved = mixer.log_weights()
    good.restore()  # a rollback copies the saved losses back in place
    assert torch.equal(mixer.log_weights(), _fresh_log_weights(mixer))
    assert not torch.equal(mixer.log_weights(), moved)
    # a snapshot or checkpoint loaded into the model
    other = build_model("auto", BINARY, {})
    _mixer(other).observe(torch.tensor([7.0, 1.0]), samples=1)
    model.load_state_dict(other.state_dict())
    assert torch.equal(mixer.log_weights(), _mixer(other).log_weights())
    # a model moved to another dtype gets new buffers, and weights computed from them
    model.double()
    assert mixer.log_weights().dtype == torch.float64
    mixer.observe(torch.tensor([1.0, 0.0]), samples=1)  # what is kept is stale now
    with torch.inference_mode():  # nothing made under inference mode is kept for training
        served = mixer.log_weights()
    assert served.is_inference()
    assert mixer.log_weights() is not served and not mixer.log_weights().is_inference()


MULTICLASS = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)


@pytest.mark.parametrize("spec", [BINARY, MULTICLASS], ids=["binary", "multiclass"])
def test_a_step_loss_is_the_heads_task_losses_and_the_mix_counts_their_errors(
    spec: SampleSpec,
) -> None:
    # the cheaper step (the mix without a graph, normalised weights, the linear head's loss
    # gradient in closed form from the mix's activations) computes what the definitions give
    torch.manual_seed(5)
    model = build_model("auto", spec, {})
    mixer = _mixer(model)
    mixer.observe(torch.tensor([1.0, 0.0]), samples=1)  # unequal weights
    head = TaskHead(spec)
    objective = Objective(model, head)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 4, generator=g) * 3
    y = torch.randint(0, spec.num_classes or 2, (16,), generator=g)
    w = torch.rand(16, generator=g) + 0.5
    heads: list[torch.Tensor] = []
    handle = mixer.register_forward_hook(lambda _m, args, _o: heads.extend(args))
    with objective.capture():
        out = model(x)
    handle.remove()
    step = objective.loss(out, y, w)
    assert step.train_grad is not None  # backward starts from the MLP head's output
    torch.autograd.backward(step.train, step.train_grad)

    stacked = torch.stack([h.detach() for h in heads], dim=-1)  # [n, width, 2]
    # backward starts from the MLP head's output with its task loss's gradient, and the
    # linear head's gradient is written: both in closed form (test_wide_head.py checks them
    # against autograd's)
    assert step.train is heads[1]
    # the reported loss is the task loss of the served (mixed) output
    torch.testing.assert_close(step.reported, head.loss(out.detach(), y, w))
    # the mix counts each head's weighted wrong predictions
    predicted = [
        head.predict(stacked[..., k].squeeze(-1) if spec.task == "binary" else stacked[..., k])
        for k in (0, 1)
    ]
    wrong = torch.stack([(p["predicted_class"] != y).float() for p in predicted], dim=-1)
    assert step.head_sums is not None
    assert torch.equal(step.head_sums, (wrong * w[:, None]).sum(dim=0))
    # both heads received a gradient, the mix none (it has no graph)
    assert not out.requires_grad
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.deep.parameters())
    assert all(p.grad is not None for p in model.wide.parameters())


def test_a_binary_mix_of_sure_heads_stays_finite() -> None:
    # the mixed probability is kept off 0 and 1 before its logit: a served logit and the
    # reported loss stay finite when both heads are sure (right or wrong)
    mixer = HedgeMixer(2, BINARY, eta=1.0, window=10)
    sure = torch.tensor([[60.0], [-60.0]])
    mixed = mixer(sure, sure)
    assert torch.isfinite(mixed).all() and mixed[0] > 15 and mixed[1] < -15
    model = nn.Module()
    model.mixer = mixer
    objective = Objective(model, TaskHead(BINARY))
    with objective.capture():
        out = model.mixer(sure.clone().requires_grad_(True), sure.clone().requires_grad_(True))
    step = objective.loss(out, torch.tensor([0, 1]), torch.ones(2))  # both wrong, and sure
    assert torch.isfinite(step.reported) and step.reported > 15
    assert torch.isfinite(step.train) and step.train > 59


@pytest.mark.parametrize("spec", [BINARY, MULTICLASS, REGRESSION], ids=lambda s: s.task)
def test_a_step_whose_mlp_head_is_not_finite_is_refused(spec: SampleSpec) -> None:
    # backward starts from the MLP head's output with its closed-form gradient, so no loss of
    # that head reaches the guard: a non-finite head must still be refused, through the mixed
    # prediction's reported loss and the gradients' norm
    learner = _learner(spec)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 4, generator=g)
    y = _labels(spec, x) if spec.task != "multiclass" else (x[:, 0] > 0).long() * 2
    assert learner.learn(x, y, torch.ones(4)).applied
    deep = learner.model.deep
    with torch.no_grad():
        deep.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    outcome = learner.learn(x, y, torch.ones(4))
    assert not outcome.applied and learner.consecutive_bad_steps == 1
    after = learner.model.state_dict()
    # nothing moved: not the linear head (its written gradient is dropped), not the mix
    for key in ("wide.weight", "wide.bias", "head.mixer.losses", "first.weight"):
        assert torch.equal(after[key], before[key]), key
