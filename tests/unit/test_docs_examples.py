"""examples/custom_model.py passes the model contract, and docs/models.md lists exactly the
hyperparameters (with their defaults) of every built-in.

Hyperparameters are table rows ``| `param` | type | `default` | meaning |`` under a
``### <model>`` heading of the "Built-in models" section; the rows under
``### Every built-in: standardisation`` belong to every built-in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamtrain.sample.spec import SampleSpec
from streamtrain.testing import check_model
from streamtrain.train.models import MODEL_NAMES, SPARSE_MODEL_NAMES, build_model
from streamtrain.train.models._params import ModelParams
from streamtrain.train.models.auto import AutoParams
from streamtrain.train.models.cnn import CNNParams
from streamtrain.train.models.dlrm import DLRMParams
from streamtrain.train.models.fm import FMParams
from streamtrain.train.models.linear import LinearParams
from streamtrain.train.models.mlp import MLPParams
from streamtrain.train.models.rnn import RNNParams
from streamtrain.train.models.transformer import TransformerParams

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "models.md"
FACTORY = "custom_model:build_residual_mlp"
PARAMS: dict[str, type[ModelParams]] = {
    "auto": AutoParams,
    "linear": LinearParams,
    "mlp": MLPParams,
    "cnn": CNNParams,
    "rnn": RNNParams,
    "transformer": TransformerParams,
    "dlrm": DLRMParams,
    "fm": FMParams,
}
SHARED = "Every built-in: standardisation"


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


def _documented_params() -> dict[str, dict[str, str]]:
    """``### heading`` -> {param: documented default} inside the "Built-in models" section."""
    tables: dict[str, dict[str, str]] = {}
    heading: str | None = None
    inside = False
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            inside = line == "## Built-in models"
            heading = None
        elif inside and line.startswith("### "):
            heading = line[4:].strip()
            tables[heading] = {}
        elif inside and heading is not None and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            name, default = cells[0].strip("`"), cells[2].strip("`")
            assert name not in tables[heading], f"{heading}: {name} documented twice"
            tables[heading][name] = default
    return tables


def _yaml_spelling(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, str):
        return value
    return repr(value)


def test_every_built_in_has_a_params_model_here() -> None:
    assert set(PARAMS) == {*MODEL_NAMES, *SPARSE_MODEL_NAMES}, (
        "a built-in was added: map it to its params model"
    )


@pytest.mark.parametrize("model", sorted(PARAMS))
def test_models_doc_lists_exactly_the_params_of(model: str) -> None:
    tables = _documented_params()
    assert model in tables, f"docs/models.md has no '### {model}' under '## Built-in models'"
    documented = {**tables[SHARED], **tables[model]}
    fields = PARAMS[model].model_fields
    assert set(documented) == set(fields), (
        f"{model}: docs/models.md lists {sorted(documented)}, the code has {sorted(fields)}"
    )
    for name, default in documented.items():
        actual = _yaml_spelling(fields[name].default)
        assert default == actual, f"{model}.{name}: documented `{default}`, code has `{actual}`"


def test_models_doc_documents_no_unknown_model() -> None:
    assert set(_documented_params()) == {*PARAMS, SHARED}


@pytest.mark.usefixtures("examples_on_path")
@pytest.mark.parametrize(
    "spec",
    [
        SampleSpec(feature_shape=(16,), task="binary"),
        SampleSpec(feature_shape=(2, 4), task="multiclass", num_classes=4),
        SampleSpec(feature_shape=(8,), task="regression", target_dim=2),
    ],
    ids=["binary", "multiclass", "regression"],
)
def test_custom_model_passes_the_contract(spec: SampleSpec) -> None:
    check_model(FACTORY, spec, {"width": 32, "blocks": 2})


@pytest.mark.usefixtures("examples_on_path")
def test_custom_model_without_standardisation_passes_the_contract() -> None:
    check_model(FACTORY, SampleSpec(feature_shape=(16,), task="binary"), {"standardize": False})


@pytest.mark.usefixtures("examples_on_path")
def test_custom_model_refuses_a_misspelt_param() -> None:
    spec = SampleSpec(feature_shape=(4,), task="binary")
    with pytest.raises(
        ValueError, match=r"widht: Extra inputs .* Valid params: width=64, blocks=2"
    ):
        build_model(FACTORY, spec, {"widht": 8})


@pytest.mark.usefixtures("examples_on_path")
def test_custom_model_statistics_travel_in_its_state_dict() -> None:
    model = build_model(FACTORY, SampleSpec(feature_shape=(4,), task="binary"), {})
    assert {"standardize.mean", "standardize.var", "standardize.count"} <= set(model.state_dict())
