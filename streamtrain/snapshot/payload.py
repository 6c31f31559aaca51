"""Weights to bytes and back: safetensors (no code runs on load) plus the manifest's sha256.

Example:
    >>> import torch
    >>> payload, infos = encode_state({"w": torch.ones(2, 3)})
    >>> [(i.name, i.dtype, i.shape) for i in infos]
    [('w', 'float32', [2, 3])]
    >>> bool(torch.equal(decode_state(payload)["w"], torch.ones(2, 3)))
    True
    >>> [len(c) for c in split_chunks(b"abcdefg", 3)]
    [3, 3, 1]
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TypeVar

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from streamtrain.snapshot.manifest import TensorInfo

_Buffer = TypeVar("_Buffer", bytes, memoryview)


class CodecError(ValueError):
    """Bytes that are not a safetensors payload, or tensors that cannot be encoded."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: the spelling manifests use."""
    return str(dtype).removeprefix("torch.")


def encode_state(tensors: Mapping[str, torch.Tensor]) -> tuple[bytes, list[TensorInfo]]:
    """Serialize named tensors with ``safetensors.torch.save``; return the bytes and their list.

    safetensors needs contiguous CPU tensors that share no storage; tensors that do (tied
    weights, views of one buffer) are cloned so the caller's state is never refused.
    """
    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise CodecError(f"snapshot entry {name!r} is a {type(tensor).__name__}, not a tensor")
        cpu = tensor.detach().to("cpu").contiguous()
        storage = cpu.untyped_storage().data_ptr()
        if storage in seen_storage and cpu.numel() > 0:
            cpu = cpu.clone()
            storage = cpu.untyped_storage().data_ptr()
        seen_storage.add(storage)
        prepared[name] = cpu
    infos = [
        TensorInfo(name=name, dtype=dtype_name(t.dtype), shape=list(t.shape))
        for name, t in prepared.items()
    ]
    return safetensors_save(prepared), infos


def decode_state(payload: bytes) -> dict[str, torch.Tensor]:
    """Parse a safetensors payload into CPU tensors; :class:`CodecError` if it is not one."""
    try:
        return dict(safetensors_load(payload))
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise CodecError(f"payload is not a valid safetensors file: {exc}") from exc


def sha256_hex(payload: bytes | memoryview) -> str:
    return hashlib.sha256(payload).hexdigest()


def split_chunks(payload: _Buffer, chunk_bytes: int) -> list[_Buffer]:
    """Cut ``payload`` into pieces of ``chunk_bytes`` (the last may be shorter); at least one.

    A ``memoryview`` is cut without copying (the publisher hands the views to the producer).
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    if not payload:
        return [payload[0:0]]
    return [payload[i : i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)]


def describe_mismatch(
    tensors: Mapping[str, torch.Tensor], expected: list[TensorInfo]
) -> str | None:
    """Say how decoded ``tensors`` differ from the manifest's list; None when they match."""
    names = {info.name for info in expected}
    missing = sorted(names - set(tensors))
    extra = sorted(set(tensors) - names)
    if missing or extra:
        return f"tensor names differ from the manifest: missing {missing[:5]}, extra {extra[:5]}"
    for info in expected:
        tensor = tensors[info.name]
        if dtype_name(tensor.dtype) != info.dtype or list(tensor.shape) != info.shape:
            return (
                f"tensor {info.name!r} is {dtype_name(tensor.dtype)}{list(tensor.shape)} but the "
                f"manifest says {info.dtype}{info.shape}"
            )
    return None
