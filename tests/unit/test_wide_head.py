"""``auto``'s heads learn in closed form (train/wide_head.py): their gradients are autograd's."""

from __future__ import annotations

import pytest
import torch

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models import build_model
from streamtrain.train.models.auto import LinearAndMLP
from streamtrain.train.objective import Objective
from streamtrain.train.task import LossName, TaskHead

BINARY = SampleSpec(feature_shape=(4,), task="binary")
MULTICLASS = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)
REGRESSION = SampleSpec(feature_shape=(4,), task="regression")
CASES = [(BINARY, "bce"), (MULTICLASS, "cross_entropy"), (REGRESSION, "mse"), (REGRESSION, "huber")]


@pytest.mark.parametrize(("spec", "loss"), CASES, ids=[f"{s.task}-{n}" for s, n in CASES])
@pytest.mark.parametrize("n", [1, 16])
def test_the_linear_heads_closed_form_gradient_is_autograds(
    spec: SampleSpec, loss: LossName, n: int
) -> None:
    torch.manual_seed(5)
    model = build_model("auto", spec, {})
    assert isinstance(model, LinearAndMLP) and model.wide is not None
    assert model.standardize is not None
    with torch.no_grad():  # a head that is not at its zero start, so every term counts
        model.wide.weight.normal_()
        model.wide.bias.normal_()
    head = TaskHead(spec, loss)
    objective = Objective(model, head)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 4, generator=g) * 3
    if spec.task == "regression":
        y = x[:, :1] * 4 + 10
    else:
        y = torch.randint(0, spec.num_classes or 2, (n,), generator=g)
    w = torch.rand(n, generator=g) + 0.5
    seen: list[torch.Tensor] = []
    model.standardize.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    with objective.capture():
        out = model(x)
    step = objective.loss(out, y, w)
    targets: torch.Tensor = y
    if objective.targets is not None:  # regression learns standardised targets
        targets = objective.targets.standardize(y.float())

    weight = model.wide.weight.detach().clone().requires_grad_()
    bias = model.wide.bias.detach().clone().requires_grad_()
    z = torch.nn.functional.linear(seen[0], weight, bias)
    own = head.per_sample_loss(z.squeeze(-1) if spec.task == "binary" else z, targets)
    ((own * w).sum() / w.sum()).backward()
    assert weight.grad is not None and bias.grad is not None
    torch.testing.assert_close(model.wide.weight.grad, weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.wide.bias.grad, bias.grad, rtol=1e-5, atol=1e-6)
    # the MLP head's loss gradient is closed form too: autograd's of its own task loss
    assert step.train_grad is not None and step.train.requires_grad
    deep = step.train.detach().requires_grad_()
    own = head.per_sample_loss(deep.squeeze(-1) if spec.task == "binary" else deep, targets)
    ((own * w).sum() / w.sum()).backward()
    assert deep.grad is not None
    torch.testing.assert_close(step.train_grad, deep.grad, rtol=1e-5, atol=1e-7)
    # backward starts from the MLP head's output: it reaches the MLP, never the linear head
    torch.autograd.backward(step.train, step.train_grad)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.deep.parameters())
    torch.testing.assert_close(model.wide.weight.grad, weight.grad, rtol=1e-5, atol=1e-6)


def test_under_a_loss_scaler_the_closed_form_gradient_is_scaled_as_backwards_are() -> None:
    # fp16 autocast comes with a GradScaler, which unscales every gradient of the optimizer's
    # parameters after backward: the linear head's written gradient must be scaled like them
    from streamtrain.train.optim import build_optimizer, param_groups

    def grads(scaled: bool) -> list[torch.Tensor]:
        torch.manual_seed(5)
        model = build_model("auto", BINARY, {})
        assert isinstance(model, LinearAndMLP) and model.wide is not None
        optimizer = build_optimizer(param_groups(model, "adam"), "adam", lr=0.01)
        objective = Objective(model, TaskHead(BINARY))
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
        objective.scaler = scaler
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
        with objective.capture():
            out = model(x)
        step = objective.loss(out, (x[:, 0] > 0).long(), torch.ones(8))
        assert step.train_grad is not None  # scaled as Learner._backward scales it
        grad = step.train_grad if scaler is None else scaler.scale(step.train_grad)
        torch.autograd.backward(step.train, grad)
        if scaler is not None:
            torch.testing.assert_close(
                model.wide.weight.grad, grads(False)[0] * 1024.0, rtol=1e-6, atol=1e-7
            )
            scaler.unscale_(optimizer)
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for got, want in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
