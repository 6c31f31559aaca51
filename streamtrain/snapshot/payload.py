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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
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
    first = parts.parts[0]
    if len(parts.parts) == 1 and isinstance(first, memoryview):
        return first, infos
    buffer = torch.empty(parts.size, dtype=torch.uint8)
    start = 0
    for part in parts.pieces():
        if len(part):  # (torch.frombuffer warns on a read-only buffer: the header's)
            source = bytearray(part) if part.readonly else part
            flat = torch.frombuffer(source, dtype=torch.uint8)
            buffer[start : start + len(part)].copy_(flat)  # torch releases the GIL here
        start += len(part)
    return buffer.numpy().data, infos  # a memoryview: the buffer lives as long as it does


# A tensor's bytes read piece by piece during a write (``StreamedPart``): each piece valid only
# until the next is asked for (a bounce buffer, ``snapshot/shadow.py``).
Pieces = Callable[[], Iterator[memoryview]]


def streamable(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` may be a streamed part of ``encode_parts`` (its dtype is written by
    this module, not by ``safetensors.save``, and it lives on the CPU)."""
    return tensor.dtype in _DTYPES and tensor.device.type == "cpu"


def encode_parts(
    tensors: Mapping[str, torch.Tensor], streamed: Mapping[str, Pieces] | None = None
) -> tuple[EncodedPayload, list[TensorInfo]]:
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

    A name in ``streamed`` (``streamable`` tensors only) gives only its dtype and shape from
    ``tensors``: its bytes are the pieces ``streamed[name]()`` yields while the payload is
    cut (``EncodedPayload.iter_chunks``), so the writer reads a base from a source that may
    change meanwhile (``snapshot/shadow.py`` keeps the pieces exact).
    """
    streamed = streamed or {}
    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise CodecError(f"snapshot entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if name in streamed:
            if not streamable(tensor):
                raise CodecError(f"snapshot entry {name!r} cannot be streamed: {tensor.dtype}")
            prepared[name] = tensor  # only its dtype and shape are read
            continue
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
    return _safetensors_parts(prepared, streamed), infos


@dataclass(frozen=True)
class StreamedPart:
    """``size`` bytes of a payload read as ``pieces()`` yields them (``encode_parts``)."""

    size: int
    pieces: Pieces


class EncodedPayload:
    """A payload as consecutive parts (the header, each tensor's bytes): its size, sha256 and
    chunks, without joining the parts."""

    def __init__(self, parts: list[memoryview | StreamedPart]) -> None:
        self.parts = parts
        self.size = sum(
            part.size if isinstance(part, StreamedPart) else len(part) for part in parts
        )

    def chunk_count(self, chunk_bytes: int) -> int:
        """How many chunks ``iter_chunks`` yields (an empty payload is one empty chunk)."""
        return max(1, -(-self.size // chunk_bytes))

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.pieces():
            digest.update(piece)  # hashlib releases the GIL for large updates
        return digest.hexdigest()

    def chunks(self, chunk_bytes: int) -> list[memoryview | bytes]:
        """``iter_chunks`` as a list, for a payload without streamed parts."""
        if any(isinstance(part, StreamedPart) for part in self.parts):
            raise ValueError("a payload with streamed parts is read once, by iter_chunks")
        return list(self.iter_chunks(chunk_bytes))

    def iter_chunks(
        self, chunk_bytes: int, digest: hashlib._Hash | None = None
    ) -> Iterator[memoryview | bytes]:
        """The payload cut as :func:`split_chunks` cuts the joined bytes, each chunk added to
        ``digest`` (the manifest's sha256, in the same pass) as it is yielded. A chunk inside
        one part is a view of it (no copy; a streamed part's view is valid only until the
        next chunk is asked for); one across parts or pieces is joined into new bytes."""
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        pending: list[bytes] = []  # the pieces of a chunk that crosses parts (copied)
        pending_bytes = 0
        yielded = False
        for piece in self.pieces():
            at = 0
            while at < len(piece):
                take = min(chunk_bytes - pending_bytes, len(piece) - at)
                view = piece[at : at + take]
                at += take
                if not pending and take == chunk_bytes:
                    yielded = True
                    yield _hashed(view, digest)
                    continue
                pending.append(bytes(view))
                pending_bytes += take
                if pending_bytes == chunk_bytes:
                    yielded = True
                    yield _hashed(b"".join(pending), digest)
                    pending, pending_bytes = [], 0
        if pending or not yielded:
            yield _hashed(b"".join(pending), digest)

    def pieces(self) -> Iterator[memoryview]:
        """The payload's bytes in order, as views (a streamed part's as its pieces)."""
        for part in self.parts:
            if not isinstance(part, StreamedPart):
                yield part
                continue
            read = 0
            for piece in part.pieces():
                read += len(piece)
                yield piece
            if read != part.size:
                raise CodecError(f"a streamed part gave {read} bytes, not {part.size}")


def _hashed(chunk: _Buffer, digest: hashlib._Hash | None) -> _Buffer:
    if digest is not None:
        digest.update(chunk)  # hashlib releases the GIL for large updates
    return chunk


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


def _safetensors_parts(
    prepared: Mapping[str, torch.Tensor], streamed: Mapping[str, Pieces]
) -> EncodedPayload:
    """The safetensors file of ``prepared``: an 8-byte little-endian header length, the JSON
    header (compact, padded with spaces to a multiple of 8), then each tensor's bytes (views
    of the tensors' memory, or the pieces of a ``streamed`` one)."""
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
    parts: list[memoryview | StreamedPart] = [memoryview(prefix)]
    for name, tensor in ordered:
        pieces = streamed.get(name)
        if pieces is not None:
            parts.append(StreamedPart(tensor.numel() * tensor.element_size(), pieces))
            continue
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
