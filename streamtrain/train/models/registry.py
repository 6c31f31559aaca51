"""Finding a model factory by name: a built-in, or a user's ``package.module:factory``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol

import torch  # noqa: F401  (used by the doctest)
from torch import nn

from streamtrain.sample.spec import SampleSpec


class ModelFactory(Protocol):
    """A model plugin: builds a fresh module for ``spec`` from hyperparameters ``params``.

    All heavy work (allocating weights) happens in the call, never at import. ``forward(x)``
    takes float32 ``[n, *spec.feature_shape]`` and returns multiclass logits ``[n, C]``, binary
    logits ``[n]`` or regression values ``[n, target_dim]``. When ``spec.sparse`` declares
    sparse ID features the model is called ``forward(x, sparse)``, ``sparse`` mapping each
    feature name to a :class:`~streamtrain.sample.sparse_torch.JaggedTensor` (ids, offsets,
    weights: ``nn.EmbeddingBag``'s input); see docs/models.md.
    """

    def __call__(self, spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module: ...


# name -> "module:attribute"; imported on first use so importing the registry stays cheap
_BUILTINS: dict[str, str] = {
    "auto": "streamtrain.train.models.auto:build_auto",
    "linear": "streamtrain.train.models.linear:build_linear",
    "mlp": "streamtrain.train.models.mlp:build_mlp",
    "cnn": "streamtrain.train.models.cnn:build_cnn",
    "rnn": "streamtrain.train.models.rnn:build_rnn",
    "transformer": "streamtrain.train.models.transformer:build_transformer",
}
# built-ins over sparse ID features (they need model.sparse; see docs/models.md)
_SPARSE_BUILTINS: dict[str, str] = {
    "dlrm": "streamtrain.train.models.dlrm:build_dlrm",
    "fm": "streamtrain.train.models.fm:build_fm",
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILTINS)
SPARSE_MODEL_NAMES: tuple[str, ...] = tuple(_SPARSE_BUILTINS)


def resolve_factory(name: str) -> ModelFactory:
    """The factory for a built-in name or a ``package.module:factory`` import path."""
    if name in _BUILTINS:
        return _import(_BUILTINS[name], name)
    if name in _SPARSE_BUILTINS:
        return _import(_SPARSE_BUILTINS[name], name)
    if ":" in name:
        return _import(name, name)
    raise ValueError(
        f"unknown model {name!r}; use a built-in ({', '.join(MODEL_NAMES)}; with sparse "
        f"features {', '.join(SPARSE_MODEL_NAMES)}) or an import path "
        "'package.module:factory' to a function (spec, params) -> torch.nn.Module"
    )


def build_model(name: str, spec: SampleSpec, params: Mapping[str, Any] | None = None) -> nn.Module:
    """Build a fresh model; seed with ``torch.manual_seed`` first for reproducible weights.

    >>> spec = SampleSpec(feature_shape=(16,), task="multiclass", num_classes=3)
    >>> model = build_model("mlp", spec, {"hidden_sizes": [8]})
    >>> model(torch.zeros(2, 16)).shape
    torch.Size([2, 3])
    """
    factory = resolve_factory(name)
    try:
        model = factory(spec, dict(params or {}))
    except ValueError:
        raise  # the factory's own message about its parameters
    except Exception as exc:  # a user's factory may raise anything; name it, never a traceback
        raise ValueError(
            f"model factory {name!r} raised {type(exc).__name__}: {exc}; it is called as "
            "factory(spec, params) and must return a torch.nn.Module (docs/models.md)"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module; "
            "a factory must return the module it built"
        )
    return model


def _import(path: str, name: str) -> ModelFactory:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model import path {name!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} for model {name!r}: {exc}. "
            "Check the module is installed or on PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None:
        public = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v))
        shown = ", ".join(public[:12]) + (", ..." if len(public) > 12 else "")
        raise ValueError(
            f"module {module_name!r} has no attribute {attr!r} for model {name!r}; "
            f"its public callables: {shown or 'none'}"
        )
    if not callable(factory):
        raise ValueError(
            f"{path!r} is a {type(factory).__name__}, not a callable (spec, params) -> nn.Module"
        )
    return factory  # type: ignore[no-any-return]
