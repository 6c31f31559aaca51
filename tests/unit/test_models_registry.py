"""Model registry: names, output convention, hyperparameter errors, user factories."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models import MODEL_NAMES, build_model

MULTI = SampleSpec(feature_shape=(6, 4), task="multiclass", num_classes=5)
BINARY = SampleSpec(feature_shape=(6, 4), task="binary")
REGRESS = SampleSpec(feature_shape=(6, 4), task="regression", target_dim=3)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    ("spec", "tail"), [(MULTI, (5,)), (BINARY, ()), (REGRESS, (3,))], ids=["multi", "bin", "reg"]
)
def test_every_builtin_follows_the_output_convention(
    name: str, spec: SampleSpec, tail: tuple[int, ...]
) -> None:
    model = build_model(name, spec)
    for n in (1, 7):
        out = model(torch.randn(n, *spec.feature_shape))
        assert out.shape == (n, *tail), f"{name} on {spec.task} gave {tuple(out.shape)}"
        assert out.dtype == torch.float32


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_builds_identical_weights(name: str) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        states.append(build_model(name, MULTI).state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_cnn_accepts_two_dimensional_images_and_rgb() -> None:
    gray = build_model("cnn", SampleSpec(feature_shape=(8, 8), task="multiclass", num_classes=10))
    assert gray(torch.zeros(2, 8, 8)).shape == (2, 10)
    rgb = SampleSpec(feature_shape=(3, 32, 32), task="binary")
    assert build_model("cnn", rgb, {"channels": [4, 8]})(torch.zeros(2, 3, 32, 32)).shape == (2,)


def test_rnn_gru_bidirectional_and_stacked() -> None:
    model = build_model(
        "rnn", MULTI, {"cell": "gru", "num_layers": 2, "dropout": 0.1, "bidirectional": True}
    )
    assert model(torch.zeros(3, 6, 4)).shape == (3, 5)


def test_typo_in_params_names_the_field_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'hiden_sizes'.*did you mean 'hidden_sizes'") as info:
        build_model("mlp", MULTI, {"hiden_sizes": [8]})
    assert "Valid params: hidden_sizes=" in str(info.value)


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("mlp", {"activation": "swish"}, "activation"),
        ("mlp", {"dropout": 1.5}, "dropout"),
        ("transformer", {"d_model": 30, "nhead": 4}, "multiple of nhead"),
        ("rnn", {"dropout": 0.2}, "num_layers >= 2"),
        ("linear", {"bias": False}, "'bias' is not a parameter"),
    ],
)
def test_bad_params_are_value_errors(name: str, params: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        build_model(name, MULTI, params)


def test_shape_that_does_not_fit_the_architecture_says_how_to_fix() -> None:
    flat = SampleSpec(feature_shape=(2, 3, 4, 5), task="binary")
    with pytest.raises(ValueError, match=r"\(T, F\).*input_shape"):
        build_model("rnn", flat)
    with pytest.raises(ValueError, match=r"\(C, H, W\).*input_shape"):
        build_model("cnn", SampleSpec(feature_shape=(16,), task="binary"))


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ValueError, match="linear, mlp, cnn, rnn, transformer"):
        build_model("resnet", MULTI)


def test_user_factory_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def tiny(spec, params):\n"
        "    return torch.nn.Linear(spec.feature_size, params['out'])\n"
        "def broken(spec, params):\n"
        "    return 'not a module'\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    model = build_model("my_models:tiny", SampleSpec(feature_shape=(4,), task="binary"), {"out": 2})
    assert isinstance(model, torch.nn.Linear) and model.out_features == 2
    with pytest.raises(ValueError, match=r"returned str, not a torch\.nn\.Module"):
        build_model("my_models:broken", MULTI)
    with pytest.raises(ValueError, match=r"no attribute 'missing'.*tiny"):
        build_model("my_models:missing", MULTI)
    with pytest.raises(ValueError, match="not a callable"):
        build_model("my_models:NOT_CALLABLE", MULTI)
    with pytest.raises(
        ValueError, match=r"cannot import module 'no_such_pkg_xyz\.mod'.*No module named"
    ):
        build_model("no_such_pkg_xyz.mod:factory", MULTI)
