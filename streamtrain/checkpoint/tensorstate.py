"""Split nested state (dicts, lists, tuples, numbers, tensors) into safetensors tensors + JSON.

``torch`` state dicts (optimizers, LR schedulers) mix tensors with Python scalars, tuples and
int-keyed dicts. Safetensors holds only flat named tensors and JSON only strings-keyed objects,
so :func:`flatten` walks the structure once and returns

1. a flat ``{name: tensor}`` mapping, each tensor a contiguous CPU copy sharing no storage (what
   safetensors requires), named by its path, e.g. ``state/3/exp_avg``;
2. a JSON-safe skeleton in which every tensor is replaced by a reference to its name and every
   value JSON cannot express exactly is tagged: tuples, dicts with non-string keys, non-finite
   floats.

:func:`unflatten` inverts it exactly: a tensor stays a tensor, a number stays a number of the same
Python type (``1`` vs ``1.0`` vs ``True``), a tuple stays a tuple. Both directions reject
anything else with an error naming the path, so nothing is silently coerced.

Example:
    >>> import torch
    >>> tensors, skeleton = flatten({"step": torch.tensor(3.0), "betas": (0.9, 0.999)})
    >>> sorted(tensors)
    ['step']
    >>> unflatten(skeleton, tensors, source="demo")["betas"]
    (0.9, 0.999)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

JSONValue = Any  # recursive JSON types are not expressible without a cast-heavy alias
_TENSOR = "__st_tensor__"
_TUPLE = "__st_tuple__"
_DICT = "__st_dict__"
_FLOAT = "__st_float__"
_TAG_PREFIX = "__st_"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class TensorStateError(ValueError):
    """Nested state that cannot be split into tensors + JSON, or a skeleton that is malformed."""


def flatten(obj: object, *, root: str = "") -> tuple[dict[str, torch.Tensor], JSONValue]:
    """Split ``obj`` into ``({name: tensor}, skeleton)``; see the module docstring."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(obj, root, tensors)
    return tensors, skeleton


def unflatten(skeleton: JSONValue, tensors: Mapping[str, torch.Tensor], *, source: str) -> Any:
    """Rebuild the object :func:`flatten` split. ``source`` names the files in error messages.

    Every tensor in ``tensors`` must be referenced exactly once: a stray or missing name means the
    JSON and the safetensors file do not belong together.
    """
    used: set[str] = set()
    value = _decode(skeleton, tensors, used, "", source)
    stray = sorted(set(tensors) - used)
    if stray:
        raise TensorStateError(
            f"{source}: tensors {stray[:5]} are not referenced by the JSON; the tensor file and "
            "the JSON were not written together"
        )
    return value


def _tensor_name(path: str, tensors: Mapping[str, torch.Tensor]) -> str:
    name = path or "tensor"
    if name not in tensors:
        return name
    # Keys containing "/" can collide with nested paths; the skeleton records the real name.
    n = 1
    while f"{name}#{n}" in tensors:
        n += 1
    return f"{name}#{n}"


def _encode(obj: object, path: str, tensors: dict[str, torch.Tensor]) -> JSONValue:
    if isinstance(obj, torch.Tensor):
        name = _tensor_name(path, tensors)
        # A private contiguous CPU copy: no shared storage, safe to write while training goes on.
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: name}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return {_FLOAT: "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) and not k.startswith(_TAG_PREFIX) for k in obj)
        if plain:
            return {k: _encode(v, _join(path, k), tensors) for k, v in obj.items()}
        pairs = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TensorStateError(
                    f"{path or '<root>'}: dict key {k!r} of type {type(k).__name__} cannot be "
                    "stored; use str, int, float, bool or None keys"
                )
            pairs.append([_encode(k, path, {}), _encode(v, _join(path, k), tensors)])
        return {_DICT: pairs}
    raise TensorStateError(
        f"{path or '<root>'}: value of type {type(obj).__name__} cannot be stored as tensors + "
        "JSON; state may hold only tensors, numbers, strings, bools, None, lists, tuples and dicts"
    )


def _join(path: str, key: object) -> str:
    return f"{path}/{key}" if path else str(key)


def _decode(
    node: JSONValue, tensors: Mapping[str, torch.Tensor], used: set[str], path: str, source: str
) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors, used, _join(path, i), source) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        raise TensorStateError(f"{source}: {path or '<root>'}: unexpected JSON {type(node)}")
    if len(node) == 1:
        ((tag, payload),) = node.items()
        if tag == _TENSOR:
            if not isinstance(payload, str) or payload not in tensors:
                raise TensorStateError(
                    f"{source}: {path or '<root>'}: refers to tensor {payload!r}, which the "
                    "tensor file does not hold"
                )
            if payload in used:
                raise TensorStateError(f"{source}: tensor {payload!r} is referenced twice")
            used.add(payload)
            return tensors[payload]
        if tag == _TUPLE:
            items = _expect_list(payload, path, source)
            return tuple(
                _decode(v, tensors, used, _join(path, i), source) for i, v in enumerate(items)
            )
        if tag == _FLOAT:
            if payload not in _NON_FINITE:
                raise TensorStateError(f"{source}: {path}: bad non-finite float {payload!r}")
            return _NON_FINITE[payload]
        if tag == _DICT:
            out: dict[Any, Any] = {}
            for pair in _expect_list(payload, path, source):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise TensorStateError(f"{source}: {path}: dict entry must be [key, value]")
                key = _decode(pair[0], {}, set(), path, source)
                out[key] = _decode(pair[1], tensors, used, _join(path, key), source)
            return out
    if any(k.startswith(_TAG_PREFIX) for k in node):
        raise TensorStateError(f"{source}: {path or '<root>'}: malformed tagged value {node!r}")
    return {k: _decode(v, tensors, used, _join(path, k), source) for k, v in node.items()}


def _expect_list(payload: object, path: str, source: str) -> list[Any]:
    if not isinstance(payload, list):
        raise TensorStateError(f"{source}: {path or '<root>'}: expected a JSON list")
    return payload
