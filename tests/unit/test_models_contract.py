"""Every built-in passes the shipped contract suite; broken plugins fail it with a clear reason."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from streamtrain.sample.spec import SampleSpec
from streamtrain.testing import ToyStream, check_model

SEQ = (6, 4)
CASES: list[tuple[str, SampleSpec, dict[str, Any] | None]] = [
    ("linear", SampleSpec(feature_shape=(16,), task="multiclass", num_classes=5), None),
    ("linear", SampleSpec(feature_shape=(4,), task="binary"), None),
    ("linear", SampleSpec(feature_shape=(8,), task="regression", target_dim=2), None),
    ("mlp", SampleSpec(feature_shape=(16,), task="multiclass", num_classes=3), None),
    ("mlp", SampleSpec(feature_shape=(16,), task="binary"), {"activation": "gelu"}),
    ("mlp", SampleSpec(feature_shape=(16,), task="regression"), {"hidden_sizes": [32, 16]}),
    (
        "mlp",
        SampleSpec(feature_shape=(16,), task="multiclass", num_classes=3),
        {"dropout": 0.2, "activation": "tanh"},
    ),
    (
        "cnn",
        SampleSpec(feature_shape=(1, 8, 8), task="multiclass", num_classes=10),
        {"channels": [8, 16], "hidden_size": 32},
    ),
    (
        "rnn",
        SampleSpec(feature_shape=SEQ, task="multiclass", num_classes=3),
        {"cell": "lstm", "hidden_size": 32},
    ),
    ("rnn", SampleSpec(feature_shape=SEQ, task="binary"), {"cell": "gru", "hidden_size": 32}),
    ("transformer", SampleSpec(feature_shape=SEQ, task="multiclass", num_classes=3), None),
]


@pytest.mark.parametrize(
    ("name", "spec", "params"),
    CASES,
    ids=[f"{name}-{spec.task}-{i}" for i, (name, spec, _) in enumerate(CASES)],
)
def test_builtin_passes_the_contract(
    name: str, spec: SampleSpec, params: dict[str, Any] | None
) -> None:
    check_model(name, spec, params)


def test_check_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_model("linear", SampleSpec(feature_shape=(4,), task="binary"), steps=50)
    assert torch.equal(torch.rand(3), expected)


def test_toy_stream_is_reproducible_per_seed() -> None:
    spec = SampleSpec(feature_shape=(3,), task="regression", target_dim=2)
    a, b = ToyStream(spec, seed=4).batch(8), ToyStream(spec, seed=4).batch(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[1].shape == (8, 2) and a[1].dtype == torch.float32


BROKEN = """
import torch
from torch import nn


class Frozen(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.proj = nn.Linear(spec.feature_size, spec.num_classes)
        self.proj.requires_grad_(False)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.proj(x.flatten(1)) + 0 * self.bias


class Hidden(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.proj = nn.Linear(spec.feature_size, spec.num_classes)
        self.scale = torch.rand(())  # not a buffer: lost in state_dict

    def forward(self, x):
        return self.proj(x.flatten(1)) * (1 + self.scale)


class Wide(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.proj = nn.Linear(spec.feature_size, 1)

    def forward(self, x):
        return self.proj(x.flatten(1))  # [n, 1] where binary wants [n]


def frozen(spec, params):
    return Frozen(spec)


def hidden(spec, params):
    return Hidden(spec)


def wide(spec, params):
    return Wide(spec)
"""


@pytest.fixture
def broken_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "broken_models.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_models", raising=False)
    yield "broken_models"


MULTI = SampleSpec(feature_shape=(8,), task="multiclass", num_classes=3)


def test_a_model_that_cannot_learn_fails_clause_learns(broken_models: str) -> None:
    with pytest.raises(AssertionError, match=r"held-out loss went .* expected below 70%"):
        check_model(f"{broken_models}:frozen", MULTI, steps=30)


def test_state_outside_state_dict_fails_the_round_trip(broken_models: str) -> None:
    with pytest.raises(AssertionError, match="safetensors round trip differ"):
        check_model(f"{broken_models}:hidden", MULTI, steps=30)


def test_wrong_output_shape_fails_the_convention(broken_models: str) -> None:
    with pytest.raises(AssertionError, match=r"returned \(1, 1\), expected \(1,\)"):
        check_model(f"{broken_models}:wide", SampleSpec(feature_shape=(8,), task="binary"))
