"""Model, optimizer and LR-scheduler state as safetensors tensors + JSON, and back.

Decoding validates against the live objects *before* anything is loaded into them, so a
checkpoint that does not fit (other model shape, other optimizer class, other parameter groups)
is rejected while the caller's objects are still untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from streamtrain.checkpoint.state import CheckpointError
from streamtrain.checkpoint.tensorstate import TensorStateError, flatten, unflatten

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_TENSORS = "scheduler.safetensors"
SCHEDULER_JSON = "scheduler.json"
_MAX_LISTED = 5


def to_json_bytes(doc: object, what: str) -> bytes:
    """Strict JSON (no NaN/Infinity literals); ``what`` names the content in errors."""
    try:
        return json.dumps(doc, allow_nan=False, indent=1).encode()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what} is not JSON-serializable: {exc}") from exc


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Private contiguous CPU copies of the state dict; tied weights become two plain copies."""
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"model.state_dict() entry {name!r} is a {type(value).__name__}; checkpoints "
                "hold tensors only, so keep non-tensor model state in TrainerState.extra"
            )
        out[name] = value.detach().to("cpu", copy=True).contiguous()
    return out


def check_model(tensors: Mapping[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Names, shapes and dtypes must match the live model exactly."""
    expected = model.state_dict()
    problems: list[str] = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing[:_MAX_LISTED]}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:_MAX_LISTED]}")
    for name in sorted(set(expected) & set(tensors)):
        want, got = expected[name], tensors[name]
        if want.shape != got.shape or want.dtype != got.dtype:
            problems.append(
                f"{name!r} is {got.dtype} {tuple(got.shape)}, model has {want.dtype} "
                f"{tuple(want.shape)}"
            )
    if problems:
        raise CheckpointError(
            f"{path}: does not match this model: {'; '.join(problems[:_MAX_LISTED])}. Was the "
            "checkpoint written by a different model configuration?"
        )


def encode_optimizer(optimizer: Optimizer) -> tuple[dict[str, torch.Tensor], bytes]:
    """``optimizer.state_dict()`` split into tensors (``state/<param>/<name>``) and JSON."""
    return _encode_doc(type(optimizer).__qualname__, optimizer.state_dict(), "optimizer state")


def decode_optimizer(
    raw: bytes, tensors: Mapping[str, torch.Tensor], optimizer: Optimizer, path: Path
) -> dict[str, Any]:
    """Rebuild the optimizer state dict and check it fits ``optimizer``'s parameter groups."""
    state_dict = _decode_doc(raw, tensors, type(optimizer).__qualname__, path)
    if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
        raise CheckpointError(
            f"{path}: optimizer state must hold exactly 'state' and 'param_groups'"
        )
    state, groups = state_dict["state"], state_dict["param_groups"]
    live_groups = optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(live_groups):
        count = len(groups) if isinstance(groups, list) else "no"
        raise CheckpointError(
            f"{path}: {count} parameter groups, the optimizer has {len(live_groups)}"
        )
    param_ids: set[int] = set()
    for index, (group, live) in enumerate(zip(groups, live_groups, strict=True)):
        params = group.get("params") if isinstance(group, dict) else None
        if not isinstance(params, list) or not all(isinstance(p, int) for p in params):
            raise CheckpointError(f"{path}: parameter group {index} has no valid 'params' list")
        if len(params) != len(live["params"]):
            raise CheckpointError(
                f"{path}: parameter group {index} has {len(params)} parameters, the optimizer "
                f"has {len(live['params'])}"
            )
        param_ids.update(params)
    if not isinstance(state, dict) or not set(state) <= param_ids:
        raise CheckpointError(f"{path}: per-parameter state refers to unknown parameters")
    return state_dict


def encode_scheduler(scheduler: LRScheduler) -> tuple[dict[str, torch.Tensor], bytes]:
    """``scheduler.state_dict()`` minus functions (lambdas are code, not state) as tensors + JSON.

    Dropping a function entry is safe: ``load_state_dict`` updates the scheduler's attributes,
    so the live scheduler keeps its own functions.
    """
    state_dict = {k: v for k, v in scheduler.state_dict().items() if not _is_function(v)}
    return _encode_doc(type(scheduler).__qualname__, state_dict, "LR scheduler state")


def _encode_doc(
    cls: str, state_dict: Mapping[str, Any], what: str
) -> tuple[dict[str, torch.Tensor], bytes]:
    """A state dict as tensors + a JSON doc naming the class it belongs to."""
    try:
        tensors, skeleton = flatten(state_dict)
    except TensorStateError as exc:
        raise CheckpointError(f"{what} cannot be checkpointed: {exc}") from exc
    return tensors, to_json_bytes({"class": cls, "state_dict": skeleton}, what)


def decode_scheduler(
    raw: bytes, tensors: Mapping[str, torch.Tensor], scheduler: LRScheduler, path: Path
) -> dict[str, Any]:
    """Rebuild the scheduler state dict; the scheduler class must match."""
    state_dict = _decode_doc(raw, tensors, type(scheduler).__qualname__, path)
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: LR scheduler state must be a JSON object")
    return state_dict


def _is_function(value: object) -> bool:
    return callable(value) and not isinstance(value, (torch.Tensor, type))


def _decode_doc(raw: bytes, tensors: Mapping[str, torch.Tensor], cls: str, path: Path) -> Any:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or set(doc) != {"class", "state_dict"}:
        raise CheckpointError(f"{path}: expected an object with 'class' and 'state_dict'")
    if doc["class"] != cls:
        raise CheckpointError(
            f"{path}: state of a {doc['class']!r}, but the object to restore is a {cls!r}; "
            "use the same class the checkpoint was written with"
        )
    try:
        return unflatten(doc["state_dict"], tensors, source=str(path))
    except TensorStateError as exc:
        raise CheckpointError(str(exc)) from exc
