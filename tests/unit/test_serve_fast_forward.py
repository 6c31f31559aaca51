"""The direct forward of the built-in dense models (serve/weights/fast_forward.py): the model's
own outputs bit for bit, every hot swap seen on the next pass, and the model itself for any
model it does not know."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.fast_forward import ForwardCache, dense_forward
from streamtrain.serve.weights.inference import BatchingEngine, DirectEngine, head_for
from streamtrain.serve.weights.retained import RetainedVersions
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.train.models import build_model
from streamtrain.train.models.target_scale import TargetStandardize

SPECS = {
    "multiclass": SampleSpec((6,), "multiclass", num_classes=4),
    "binary": SampleSpec((2, 3), "binary"),
    "regression": SampleSpec((6,), "regression", target_dim=2),
}
CPU = torch.device("cpu")


def _trained(name: str, spec: SampleSpec, params: Mapping[str, Any], seed: int) -> nn.Module:
    """A built-in with non-trivial weights and standardiser/target statistics, ready to serve."""
    torch.manual_seed(seed)
    model = build_model(name, spec, params)
    model.train()
    with torch.no_grad():  # training-mode forwards fold batches into the statistics
        for _ in range(3):
            model(torch.randn(16, *spec.feature_shape) * 3 + seed)
        for module in model.modules():
            if isinstance(module, TargetStandardize):
                module.observe(torch.randn(16, spec.target_dim) * 5 + 2)
    return model.eval().requires_grad_(False)


CASES = [
    ("mlp", "multiclass", {"hidden_sizes": [16, 8]}),
    ("mlp", "multiclass", {"hidden_sizes": [16], "activation": "gelu", "dropout": 0.3}),
    ("mlp", "binary", {"hidden_sizes": [5, 7], "activation": "tanh"}),
    ("mlp", "regression", {"hidden_sizes": [9]}),
    ("mlp", "regression", {"hidden_sizes": [9], "standardize": False, "scale_targets": False}),
    ("linear", "multiclass", {}),
    ("linear", "binary", {"standardize": False}),
    ("linear", "regression", {}),
]


@pytest.mark.parametrize(("name", "task", "params"), CASES)
@pytest.mark.parametrize("rows", [1, 5])
def test_the_direct_forward_gives_the_models_outputs_bit_for_bit(
    name: str, task: str, params: dict[str, Any], rows: int
) -> None:
    spec = SPECS[task]
    model = _trained(name, spec, params, seed=3)
    forward = dense_forward(model)
    assert forward is not None and forward is not model
    x = torch.randn(rows, *spec.feature_shape) * 2
    kept = x.clone()
    with torch.inference_mode():
        expected, got = model(x), forward(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert torch.equal(got, expected)
    assert torch.equal(x, kept)  # the caller's input is never written


def test_every_swap_is_seen_by_the_next_pass_standardiser_included() -> None:
    """The slot writes each version into the same tensors: the direct forward (which the
    engine uses for this model) must read them, and the standardiser's kept scale must move
    with the new statistics, on the first pass after each swap."""
    params: dict[str, Any] = {"hidden_sizes": [16, 8]}
    spec = SPECS["multiclass"]
    slot = WeightSlot(build_model("mlp", spec, params))
    engine = DirectEngine(slot, head_for(spec), CPU)
    features = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32) * 4
    answers = []
    for version, seed in enumerate([1, 2, 3, 2], start=1):
        reference = _trained("mlp", spec, params, seed)
        slot.load(reference.state_dict(), SnapshotHeader(version, "r"))
        prediction = engine.run(features)
        with torch.inference_mode():
            expected = reference(torch.from_numpy(features)).softmax(dim=1).numpy()
        assert prediction.info.version == version
        np.testing.assert_array_equal(prediction.outputs["probabilities"], expected)
        answers.append(prediction.outputs["probabilities"].copy())
    # each version really answered differently (the same weights twice: the same answer)
    assert not np.array_equal(answers[0], answers[1])
    assert not np.array_equal(answers[1], answers[2])
    np.testing.assert_array_equal(answers[1], answers[3])
    with slot.acquire() as lease:
        assert dense_forward(lease.model) is not None  # the engine's pass was the direct one


def test_a_replaced_parameter_tensor_is_read_too() -> None:
    """Parameters are looked up per pass, not captured: even a tensor put in place of one
    (not the slot's way, but a model's right) is what the next pass uses."""
    spec = SPECS["multiclass"]
    model = _trained("mlp", spec, {"hidden_sizes": [8]}, seed=4)
    forward = dense_forward(model)
    assert forward is not None
    model.head.proj.weight = nn.Parameter(torch.zeros(4, 8), requires_grad=False)
    x = torch.randn(2, 6)
    with torch.inference_mode():
        assert torch.equal(forward(x), model(x))
        assert torch.equal(forward(x), model.head.proj.bias.expand(2, 4))


class _ScaledMLP(nn.Module):
    """Not a built-in: its own forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x) * 2
        return out


def _unsupported() -> dict[str, nn.Module]:
    spec = SPECS["multiclass"]
    hooked = _trained("mlp", spec, {"hidden_sizes": [8]}, seed=5)
    hooked.body[0].register_forward_hook(lambda module, args, out: out * 0)
    pre_hooked = _trained("linear", spec, {}, seed=5)
    pre_hooked.head.register_forward_pre_hook(lambda module, args: (args[0] + 1,))
    training = _trained("mlp", spec, {"hidden_sizes": [8], "dropout": 0.5}, seed=5).train()
    grad = _trained("linear", spec, {}, seed=5)
    grad.head.proj.bias.requires_grad_(True)
    odd_layer = _trained("mlp", spec, {"hidden_sizes": [8]}, seed=5)
    odd_layer.body[1] = nn.Sigmoid()
    return {
        "a forward hook": hooked,
        "a pre-hook": pre_hooked,
        "training mode": training,
        "a parameter needing a gradient": grad,
        "a layer it does not know": odd_layer,
        "a model of its own": _ScaledMLP(_trained("mlp", spec, {"hidden_sizes": [8]}, seed=5)),
        "a plain Sequential": nn.Sequential(nn.Linear(6, 4), nn.ReLU()).eval(),
        "the CNN": _trained("cnn", SampleSpec((1, 4, 4), "multiclass", num_classes=3), {}, 5),
    }


@pytest.mark.parametrize("case", list(_unsupported()))
def test_a_model_it_does_not_know_is_called_as_itself(case: str) -> None:
    model = _unsupported()[case]
    assert dense_forward(model) is None
    assert ForwardCache().of(model) is model


def test_the_engines_fall_back_to_the_models_forward() -> None:
    """A hooked model is served through its own forward, hooks and all, by both engines."""
    spec = SPECS["multiclass"]
    model = _trained("mlp", spec, {"hidden_sizes": [8]}, seed=6)
    slot = WeightSlot(model)
    slot.load(model.state_dict(), SnapshotHeader(1, "r"))
    for each in slot._copies:  # live and standby
        each.model.head.proj.register_forward_hook(lambda module, args, out: out * 0 + 1)
    features = np.ones((2, 6), dtype=np.float32)
    uniform = np.full((2, 4), 0.25, dtype=np.float32)  # equal logits from the hook
    np.testing.assert_array_equal(
        DirectEngine(slot, head_for(spec), CPU).run(features).outputs["probabilities"], uniform
    )
    batching = BatchingEngine(slot, head_for(spec), CPU, 8, 0.001)
    try:
        outputs = batching.submit(features).result(timeout=60).outputs
    finally:
        batching.close()
    np.testing.assert_array_equal(outputs["probabilities"], uniform)


def test_retained_versions_answer_with_the_models_outputs() -> None:
    params: dict[str, Any] = {"hidden_sizes": [16]}
    spec = SPECS["multiclass"]
    slot = WeightSlot(build_model("mlp", spec, params))
    template = build_model("mlp", spec, params)
    retained = RetainedVersions(slot, template, head_for(spec), CPU, keep=2)
    references = {}
    for version, seed in ((1, 7), (2, 8)):
        references[version] = _trained("mlp", spec, params, seed)
        retained.load(references[version].state_dict(), SnapshotHeader(version, "r"))
    features = np.random.default_rng(1).normal(size=(2, 6)).astype(np.float32)
    for version, reference in references.items():
        prediction = retained._forward(retained._versions[version], features, None)
        with torch.inference_mode():
            expected = reference(torch.from_numpy(features)).argmax(dim=1).numpy()
        assert prediction.info.version == version
        np.testing.assert_array_equal(prediction.outputs["predicted_class"], expected)
        assert retained._versions[version].forward is not retained._versions[version].model
