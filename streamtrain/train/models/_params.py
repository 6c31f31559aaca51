"""Hyperparameter validation shared by the built-in models: typos are errors naming the field."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from streamtrain.sample.spec import SampleSpec


class ModelParams(BaseModel):
    """Base of every built-in's hyperparameter model: frozen, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=ModelParams)


def parse_params(model: str, schema: type[P], params: Mapping[str, Any] | None) -> P:
    """Validate ``params`` for built-in ``model``; raise ValueError naming every bad field.

    >>> class Demo(ModelParams):
    ...     hidden_sizes: tuple[int, ...] = (64,)
    >>> try:
    ...     parse_params("demo", Demo, {"hiden_sizes": [8]})
    ... except ValueError as exc:
    ...     print(str(exc).split(": ", 1)[1].split(". ")[0])
    'hiden_sizes' is not a parameter (did you mean 'hidden_sizes'?)
    """
    try:
        return schema.model_validate(dict(params or {}))
    except ValidationError as exc:
        fields = list(schema.model_fields)
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "params"
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(where, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{where!r} is not a parameter{hint}")
            else:
                problems.append(f"{where}: {err['msg']}")
        # the model's own fields first, then the shared ones it inherits (standardisation)
        own = [name for name in vars(schema).get("__annotations__", {}) if name in fields]
        ordered = own + [name for name in fields if name not in own]
        valid = ", ".join(f"{name}={schema.model_fields[name].default!r}" for name in ordered)
        raise ValueError(
            f"invalid params for model {model!r}: {'; '.join(problems)}. Valid params: {valid}"
        ) from None


def output_width(spec: SampleSpec) -> int:
    """Raw outputs per sample before the convention's reshaping (binary has one logit)."""
    if spec.task == "multiclass":
        return spec.num_classes
    if spec.task == "binary":
        return 1
    return spec.target_dim


def sequence_shape(model: str, spec: SampleSpec) -> tuple[int, int]:
    """``(T, F)`` of a sequence spec; a 1-D shape ``(T,)`` is a sequence of scalars."""
    shape = spec.feature_shape
    if len(shape) == 1:
        return shape[0], 1
    if len(shape) == 2:
        return shape[0], shape[1]
    raise ValueError(
        f"model {model!r} reads sequences shaped (T, F), got feature_shape {shape}; "
        "set model.input_shape to [time_steps, features], e.g. [6, 4]"
    )
