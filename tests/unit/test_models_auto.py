"""``auto``: a linear and an MLP head, mixed by Hedge (or summed, wide & deep), as one module."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from streamtrain.checkpoint import CheckpointStore, TrainerState
from streamtrain.sample.spec import SampleSpec
from streamtrain.snapshot.payload import decode_state, encode_state
from streamtrain.testing import check_model
from streamtrain.train.learner import Learner
from streamtrain.train.models import build_model
from streamtrain.train.models.auto import LinearAndMLP
from streamtrain.train.models.hedge import HedgeMixer, find_mixer
from streamtrain.train.objective import Objective
from streamtrain.train.optim import OptimizerName, build_optimizer, param_groups
from streamtrain.train.task import TaskHead

BINARY = SampleSpec(feature_shape=(4,), task="binary")


def _learner(spec: SampleSpec, params: dict[str, object] | None = None, seed: int = 0) -> Learner:
    # one step per batch of 8 keeps these tests to a few hundred steps on a busy machine
    torch.manual_seed(seed)
    model = build_model("auto", spec, params or {})
    optimizer = build_optimizer(param_groups(model, "adam"), "adam", lr=0.03)
    return Learner(model, TaskHead(spec), optimizer, step_samples="batch")


def _xor_stream(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()


def _linear_stream(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g) * torch.tensor([1.0, 5.0, 100.0, 0.1]) + 3
    return x, (x[:, 0] - 0.2 * x[:, 1] + 0.01 * x[:, 2] > 2.0).long()


def _head_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The mixer's inputs stacked, ``[n, width, heads]`` (head 0 linear, head 1 MLP), in eval
    mode."""
    mixer = find_mixer(model)
    assert mixer is not None
    seen: list[torch.Tensor] = []
    handle = mixer.register_forward_hook(lambda _m, args, _o: seen.append(torch.stack(args, -1)))
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    handle.remove()
    return seen[0]


def _learn(learner: Learner, x: torch.Tensor, y: torch.Tensor, batch: int = 8) -> None:
    for start in range(0, len(y), batch):
        rows = slice(start, start + batch)
        learner.learn(x[rows], y[rows], torch.ones(len(y[rows])))


def test_hedge_weights_move_to_the_mlp_where_only_it_can_fit() -> None:
    learner = _learner(BINARY)
    mixer = find_mixer(learner.model)
    assert mixer is not None and mixer.weights().tolist() == [0.5, 0.5]
    x, y = _xor_stream(1600, seed=1)
    _learn(learner, x, y)
    linear_w, mlp_w = mixer.weights().tolist()
    assert mlp_w > 0.95, f"XOR: the MLP head should carry the mix, weights {linear_w}, {mlp_w}"
    # and the mix predicts like the better head on held-out samples
    test_x, test_y = _xor_stream(500, seed=2)
    heads = _head_outputs(learner.model, test_x)[:, 0, :]
    accuracy = [((heads[:, k] > 0).long() == test_y).float().mean().item() for k in (0, 1)]
    learner.model.eval()
    with torch.no_grad():
        mixed = ((learner.model(test_x) > 0).long() == test_y).float().mean().item()
    assert accuracy[0] < 0.7 < accuracy[1], accuracy
    assert mixed >= accuracy[1] - 0.01


def test_hedge_weights_move_to_the_better_head_whichever_it_is() -> None:
    # a head that is clearly worse loses the weight: hobble the MLP head to a constant
    learner = _learner(BINARY)
    model = learner.model
    assert isinstance(model, LinearAndMLP)
    with torch.no_grad():
        model.deep.weight.zero_()
        model.deep.bias.fill_(4.0)  # always predicts class 1, confidently
    model.deep.requires_grad_(False)
    x, y = _linear_stream(800, seed=3)
    _learn(learner, x, y)
    mixer = find_mixer(model)
    assert mixer is not None
    linear_w, mlp_w = mixer.weights().tolist()
    assert linear_w > 0.99, (linear_w, mlp_w)


@pytest.mark.parametrize("combine", ["hedge", "sum"])
def test_the_linear_path_alone_learns_a_linear_concept(combine: str) -> None:
    learner = _learner(BINARY, {"combine": combine})
    model = learner.model
    assert isinstance(model, LinearAndMLP)
    if combine == "sum":
        # wide & deep with the deep path frozen at zero: only the wide path can learn
        with torch.no_grad():
            model.deep.weight.zero_()
            model.deep.bias.zero_()
        model.deep.requires_grad_(False)
    x, y = _linear_stream(2400, seed=4)
    _learn(learner, x, y)
    test_x, test_y = _linear_stream(1000, seed=5)
    model.eval()
    with torch.no_grad():
        wide = _head_outputs(model, test_x)[:, 0, 0] if combine == "hedge" else model(test_x)
    accuracy = ((wide > 0).long() == test_y).float().mean().item()
    assert accuracy > 0.95, f"the linear path alone scored {accuracy:.3f} on a linear concept"


def _trained(spec: SampleSpec, seed: int = 0, params: dict[str, object] | None = None) -> Learner:
    learner = _learner(spec, params, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 4, generator=g)
    if spec.task == "regression":
        y: torch.Tensor = (x[:, :1] * x[:, 1:2]) * 10 + 40
    else:
        y = (x[:, 0] * x[:, 1] > 0).long()
    _learn(learner, x, y)
    return learner


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_snapshot_round_trip_keeps_the_mix(task: str) -> None:
    spec = SampleSpec(feature_shape=(4,), task=task)  # type: ignore[arg-type]
    model = _trained(spec).model
    mixer = find_mixer(model)
    assert mixer is not None and mixer.weights()[0] != 0.5  # the mix has moved
    payload, _ = encode_state(model.state_dict())
    torch.manual_seed(99)
    fresh = build_model("auto", spec, {})
    fresh.load_state_dict(decode_state(payload))
    fresh_mixer = find_mixer(fresh)
    assert fresh_mixer is not None and torch.equal(fresh_mixer.losses, mixer.losses)
    x = torch.randn(7, 4)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


@pytest.mark.parametrize(
    "params", [{}, {"linear_lr": 0.05}, {"linear_lr": None}], ids=["default", "0.05", "shared"]
)
def test_checkpoint_round_trip_continues_bit_identically(
    tmp_path: Path, params: dict[str, object]
) -> None:
    original = _trained(BINARY, params=params)
    assert len(original.optimizer.param_groups) == (1 if params.get("linear_lr", 0) is None else 2)
    state = TrainerState(step=1, samples_seen=300, run_id="r", offsets={0: 300}, model_settings={})
    CheckpointStore(tmp_path).save(state, original.model, original.optimizer)
    # other initial weights: all must come from the file
    restored = _learner(BINARY, params, seed=42)
    assert CheckpointStore(tmp_path).load_latest(restored.model, restored.optimizer) is not None
    # both groups (the linear head's SGD-like one included) come back with their settings
    for mine, theirs in zip(
        original.optimizer.param_groups, restored.optimizer.param_groups, strict=True
    ):
        assert {k: v for k, v in mine.items() if k != "params"} == {
            k: v for k, v in theirs.items() if k != "params"
        }
    x, y = _xor_stream(200, seed=6)
    _learn(original, x, y, batch=5)
    _learn(restored, x, y, batch=5)
    for (name, a), (_, b) in zip(
        original.model.state_dict().items(), restored.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), f"{name} differs after resuming from the checkpoint"


@pytest.mark.parametrize(
    "spec",
    [
        BINARY,
        SampleSpec(feature_shape=(8,), task="multiclass", num_classes=4),
        SampleSpec(feature_shape=(6,), task="regression", target_dim=2),
    ],
    ids=["binary", "multiclass", "regression"],
)
@pytest.mark.parametrize(
    "params",
    [{"combine": "hedge"}, {"combine": "sum"}, {"linear_lr": None}, {"hedge_loss": "task"}],
    ids=["hedge", "sum", "shared", "task_loss"],
)
def test_auto_passes_check_model(spec: SampleSpec, params: dict[str, object]) -> None:
    check_model("auto", spec, params)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_the_linear_head_steps_as_plain_sgd_at_its_own_rate(name: OptimizerName) -> None:
    torch.manual_seed(3)
    model = build_model("auto", BINARY, {"linear_lr": 0.02})
    assert isinstance(model, LinearAndMLP)
    optimizer = build_optimizer(param_groups(model, name), name, lr=0.01, weight_decay=0.1)
    assert [len(group["params"]) for group in optimizer.param_groups] == [4, 2]
    for _ in range(3):  # Adam's state is built by the first step; check a later one too
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        x = torch.randn(8, 4)
        # the mixer detaches its input (each head learns from its own loss): call the heads
        # (under Adam the linear head's group is plain SGD too: train/sgd_groups.py)
        (model.wide(x).mean() + model.deep(model.body(model.first(x))).mean()).backward()
        grads = [p.grad.clone() for p in model.linear_head_parameters() if p.grad is not None]
        optimizer.step()
        for param, grad in zip(model.linear_head_parameters(), grads, strict=True):
            start = before[[id(p) for p in model.parameters()].index(id(param))]
            # SGD: the step is lr * gradient, whatever its size (Adam's would be ~lr each)
            torch.testing.assert_close(param - start, -0.02 * grad, rtol=1e-6, atol=1e-8)
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert all(moved), "every parameter, MLP and linear head, must have been stepped"


def test_mixed_probabilities_are_the_weighted_mean_of_the_heads() -> None:
    spec = SampleSpec(feature_shape=(2,), task="multiclass", num_classes=3)
    mixer = HedgeMixer(2, spec, eta=1.0, window=100)
    mixer.observe(torch.tensor([0.0, 1.0]), samples=1)
    z = torch.randn(5, 3, 2)  # [n, classes, heads]
    weights = mixer.weights()
    expected = (weights * z.softmax(dim=1)).sum(dim=-1)
    torch.testing.assert_close(mixer(*z.unbind(-1)).softmax(dim=-1), expected)
    binary = HedgeMixer(2, BINARY, eta=1.0, window=100)
    binary.observe(torch.tensor([2.0, 0.0]), samples=1)
    zb = torch.randn(5, 1, 2)
    wb = binary.weights()
    # binary: the logits [n] of the mixed probability
    torch.testing.assert_close(
        binary(*zb.unbind(-1)).sigmoid(), (wb * zb.sigmoid()).sum(dim=-1)[:, 0]
    )


def test_auto_needs_an_mlp_head() -> None:
    with pytest.raises(ValueError, match=r"hidden_sizes .* model 'linear'"):
        build_model("auto", BINARY, {"hidden_sizes": []})
    with pytest.raises(ValueError, match="did you mean 'combine'"):
        build_model("auto", BINARY, {"combin": "sum"})


class _FixedHeads(nn.Module):
    """Feeds given head logits ``[n, 1, 2]`` straight into a mixer (no weights to learn)."""

    def __init__(self, criterion: str) -> None:
        super().__init__()
        self.mixer = HedgeMixer(2, BINARY, eta=0.5, window=200, criterion=criterion)  # type: ignore[arg-type]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mixer(*z.unbind(-1))  # binary: logits [n]
        return out


@pytest.mark.parametrize(("criterion", "favoured"), [("error", 0), ("task", 1)])
def test_the_mix_weighs_heads_by_its_criterion(criterion: str, favoured: int) -> None:
    # head 0 is always right but unsure (p = 0.55: log loss 0.60); head 1 is right 9 times in
    # 10 and sure (p = 0.95), wrong the 10th time and unsure (p = 0.45): more errors, less log
    # loss (0.13). The stream is scored by accuracy, so `error` must prefer head 0.
    model = _FixedHeads(criterion)
    objective = Objective(model, TaskHead(BINARY))
    y = torch.ones(200, dtype=torch.long)
    sure = torch.full((200,), math.log(0.95 / 0.05))
    sure[::10] = math.log(0.45 / 0.55)
    z = torch.stack([torch.full((200,), math.log(0.55 / 0.45)), sure], dim=-1)[:, None, :]
    for start in range(0, 200, 4):  # 50 steps of 4 samples
        rows = slice(start, start + 4)
        with objective.capture():
            out = model(z[rows])
        loss = objective.loss(out, y[rows], torch.ones(4))
        objective.after_step(loss, 4)
    weights = model.mixer.weights().tolist()
    assert weights[favoured] > 0.99, (criterion, weights)
    # 20 errors of head 1 against none, each discounted by (1 - 1/200) per later sample
    if criterion == "error":
        assert model.mixer.losses[0] == 0 and 10 < model.mixer.losses[1] < 20


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_the_default_linear_head_is_rivers_logistic_regression(name: OptimizerName) -> None:
    # river's LogisticRegression: zero weights, one SGD step at 0.01 per sample on the log
    # loss of the standardised features; the default `auto` head takes the same steps, under
    # the default Adam too (its linear-head group is plain SGD, train/sgd_groups.py, and the
    # head's gradient is written in closed form, train/wide_head.py)
    model = build_model("auto", BINARY, {})
    optimizer = build_optimizer(param_groups(model, name), name, lr=0.01)
    learner = Learner(model, TaskHead(BINARY), optimizer, step_samples=1)
    assert isinstance(model, LinearAndMLP) and model.wide is not None
    assert model.standardize is not None
    seen: list[torch.Tensor] = []
    # the features the linear head sees are the standardiser's output
    model.standardize.register_forward_hook(lambda _m, _args, out: seen.append(out.detach()))
    g = torch.Generator().manual_seed(8)
    x = torch.randn(300, 4, generator=g)
    y = (x[:, 0] - 0.5 * x[:, 1] > 0.2).long()
    weight, bias = torch.zeros(4), torch.zeros(())
    for i in range(300):
        learner.learn(x[i : i + 1], y[i : i + 1], torch.ones(1))
        xs = seen[-1][0]  # the standardised features the head saw
        error = torch.sigmoid(xs @ weight + bias) - y[i]
        weight, bias = weight - 0.01 * error * xs, bias - 0.01 * error
    assert weight[0] > 0.1  # it has learned something to compare
    torch.testing.assert_close(model.wide.weight[0], weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.wide.bias[0], bias, rtol=1e-5, atol=1e-6)
