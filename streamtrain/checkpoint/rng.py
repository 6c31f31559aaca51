"""Capture and restore every RNG the training step may draw from.

Dropout masks come from torch's CPU or CUDA generator; data augmentation or sampling code may use
numpy's or Python's global generator. A restored run draws the same numbers as an uninterrupted
one only if all of them are put back.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from streamtrain.checkpoint.meta import NumpyRngState, PythonRngState, RngMeta
from streamtrain.checkpoint.state import CheckpointError

log = logging.getLogger(__name__)

RNG_FILE = "rng.safetensors"
_TORCH_CPU = "torch_cpu"


def _cuda_key(index: int) -> str:
    return f"cuda/{index}"


def capture_rng() -> tuple[dict[str, torch.Tensor], RngMeta]:
    """The current RNG states: torch's as tensors, numpy's and Python's as JSON-ready models.

    CUDA states are captured only when CUDA is already initialised, so checkpointing never
    creates a CUDA context in a CPU-only trainer.
    """
    tensors = {_TORCH_CPU: torch.get_rng_state().clone()}
    cuda_devices = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        states = torch.cuda.get_rng_state_all()
        cuda_devices = len(states)
        for index, state in enumerate(states):
            tensors[_cuda_key(index)] = state.clone()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    meta = RngMeta(
        numpy=NumpyRngState(
            bit_generator=str(name),
            keys=[int(k) for k in keys],
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached_gaussian=float(cached),
        ),
        python=PythonRngState(
            version=int(version), internal=[int(v) for v in internal], gauss_next=gauss_next
        ),
        cuda_devices=cuda_devices,
    )
    return tensors, meta


def check_rng(tensors: Mapping[str, torch.Tensor], meta: RngMeta, source: str) -> None:
    """Reject an RNG file whose tensors do not match what ``meta.json`` says was captured."""
    expected = {_TORCH_CPU} | {_cuda_key(i) for i in range(meta.cuda_devices)}
    if set(tensors) != expected:
        raise CheckpointError(
            f"{source}: holds tensors {sorted(tensors)}, expected {sorted(expected)} "
            f"(meta.json records {meta.cuda_devices} CUDA device(s))"
        )
    for name, tensor in tensors.items():
        if tensor.dtype != torch.uint8 or tensor.dim() != 1:
            raise CheckpointError(
                f"{source}: RNG state {name!r} must be a 1-D uint8 tensor, got "
                f"{tensor.dtype} {tuple(tensor.shape)}"
            )
    # Dry-run both setters on throwaway generators so a bad state is caught before anything
    # global is touched.
    try:
        np.random.RandomState().set_state(_numpy_tuple(meta.numpy))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: numpy RNG state in meta.json is invalid: {exc}") from exc
    try:
        random.Random().setstate(_python_tuple(meta.python))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: Python RNG state in meta.json is invalid: {exc}") from exc


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: RngMeta) -> None:
    """Put back the states :func:`capture_rng` took; validate first with :func:`check_rng`."""
    torch.set_rng_state(tensors[_TORCH_CPU])
    if meta.cuda_devices:
        if not torch.cuda.is_available():
            log.warning(
                "checkpoint holds CUDA RNG states for %d device(s) but CUDA is not available; "
                "CUDA dropout masks will differ from the uninterrupted run",
                meta.cuda_devices,
            )
        elif torch.cuda.device_count() != meta.cuda_devices:
            log.warning(
                "checkpoint holds CUDA RNG states for %d device(s) but %d are visible; "
                "CUDA RNG states not restored",
                meta.cuda_devices,
                torch.cuda.device_count(),
            )
        else:
            torch.cuda.set_rng_state_all([tensors[_cuda_key(i)] for i in range(meta.cuda_devices)])
    np.random.set_state(_numpy_tuple(meta.numpy))
    random.setstate(_python_tuple(meta.python))


def _numpy_tuple(state: NumpyRngState) -> tuple[str, np.ndarray[Any, Any], int, int, float]:
    keys = np.asarray(state.keys, dtype=np.uint32)
    return (state.bit_generator, keys, state.pos, state.has_gauss, state.cached_gaussian)


def _python_tuple(state: PythonRngState) -> tuple[int, tuple[int, ...], float | None]:
    return (state.version, tuple(state.internal), state.gauss_next)
