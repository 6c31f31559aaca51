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
import json
import struct
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
    """:func:`encode_view` as ``bytes`` (tools and tests; the publisher keeps the view)."""
    view, infos = encode_view(tensors)
    return bytes(view), infos


def encode_view(tensors: Mapping[str, torch.Tensor]) -> tuple[memoryview, list[TensorInfo]]:
    """Serialize named tensors as a safetensors file; return its bytes (a view of one
    buffer) and their list (:func:`encode_parts` joined: tools, tests and the bench).

    safetensors needs contiguous CPU tensors that share no storage; tensors that do (tied
    weights, views of one buffer) are cloned so the caller's state is never refused.

    The bytes are exactly ``safetensors.torch.save``'s (``tests/unit/test_snapshot_payload``
    compares them), but the tensors' bytes are copied with ``torch`` into one buffer, which
    releases the GIL: ``save`` holds it for the whole copy (~0.3 s for 0.26 GB, measured), and
    on the publisher's threads that stopped the training thread for as long. safetensors is
    still what reads them (``decode_state``, ``mapped.py``); a dtype outside ``_DTYPES`` is
    encoded by ``save`` itself.
    """
    parts, infos = encode_parts(tensors)
    if len(parts.parts) == 1:
        return parts.parts[0], infos
    buffer = torch.empty(parts.size, dtype=torch.uint8)
    start = 0
    for part in parts.parts:
        if len(part):  # (torch.frombuffer warns on a read-only buffer: the header's)
            source = bytearray(part) if part.readonly else part
            flat = torch.frombuffer(source, dtype=torch.uint8)
            buffer[start : start + len(part)].copy_(flat)  # torch releases the GIL here
        start += len(part)
    return buffer.numpy().data, infos  # a memoryview: the buffer lives as long as it does


def encode_parts(tensors: Mapping[str, torch.Tensor]) -> tuple[EncodedPayload, list[TensorInfo]]:
    """The safetensors file of ``tensors`` *without copying their bytes*: its header, then a
    view of each tensor's own memory, in file order (the publisher's encoder, issue 26).

    A whole snapshot's encoded copy was one more model-sized buffer in the trainer, next to
    the model, the publisher's shadow copy and the base buffers (4.6x a 1 GB model at the
    trainer's peak, measured by ``bench/delta.py``). The writer now hashes and cuts chunks
    from the tensors' memory directly, so **the tensors must not change until the write
    returns**: ``SnapshotRequest.tensors`` are the sink's to keep (``train/hooks.py``), and
    the publisher changes its shadow copy only on the thread that writes it, after the write.
    Tensors that are not contiguous CPU tensors, or share storage, are copied first, as
    before; a dtype outside ``_DTYPES`` is encoded by ``save`` (one part).
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
    if any(t.dtype not in _DTYPES for t in prepared.values()):
        return EncodedPayload([memoryview(safetensors_save(prepared))]), infos
    return _safetensors_parts(prepared), infos


class EncodedPayload:
    """A payload as consecutive parts (the header, each tensor's bytes): its size, sha256 and
    chunks, without joining the parts."""

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts = parts
        self.size = sum(len(part) for part in parts)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for part in self.parts:
            digest.update(part)  # hashlib releases the GIL for large updates
        return digest.hexdigest()

    def chunks(self, chunk_bytes: int) -> list[memoryview | bytes]:
        """The payload cut as :func:`split_chunks` cuts the joined bytes: a chunk inside one
        part is a view of it (no copy); one across parts (at most one per part boundary) is
        joined into new bytes."""
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        out: list[memoryview | bytes] = []
        pending: list[memoryview] = []  # the pieces of a chunk that crosses parts
        pending_bytes = 0
        for part in self.parts:
            at = 0
            while at < len(part):
                take = min(chunk_bytes - pending_bytes, len(part) - at)
                piece = part[at : at + take]
                at += take
                if not pending and take == chunk_bytes:
                    out.append(piece)
                    continue
                pending.append(piece)
                pending_bytes += take
                if pending_bytes == chunk_bytes:
                    out.append(b"".join(pending))
                    pending, pending_bytes = [], 0
        if pending:
            out.append(pending[0] if len(pending) == 1 else b"".join(pending))
        return out or [memoryview(b"")]


# safetensors' dtype names, in its own order (its ``Dtype`` enum): a file lists its tensors by
# dtype, largest first, then by name, so every tensor's data stays aligned.
_DTYPES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
}
_RANK = {dtype: rank for rank, dtype in enumerate(_DTYPES)}


def _safetensors_parts(prepared: Mapping[str, torch.Tensor]) -> EncodedPayload:
    """The safetensors file of ``prepared``: an 8-byte little-endian header length, the JSON
    header (compact, padded with spaces to a multiple of 8), then each tensor's bytes (views
    of the tensors' memory)."""
    ordered = sorted(prepared.items(), key=lambda item: (-_RANK[item[1].dtype], item[0]))
    header: dict[str, object] = {}
    offset = 0
    for name, tensor in ordered:
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    prefix = struct.pack("<Q", len(raw)) + raw
    parts = [memoryview(prefix)]
    for _, tensor in ordered:
        # a uint8 view of the tensor's memory; the numpy array keeps the tensor alive
        parts.append(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return EncodedPayload(parts)


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
