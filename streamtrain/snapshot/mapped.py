"""A verified safetensors file, memory-mapped: tensors that are views of the file's pages.

Why our own reader of the safetensors header: ``safetensors.safe_open`` maps the file too,
but neither lends views of a mapping we own nor exposes the byte offsets, and both are needed
to drop each block's pages from this process once it is copied. Without that, copying a 1 GB
table out of the mapping leaves 1 GB of file pages counted in the server's RSS until the
mapping closes. The header is validated as strictly as safetensors does (known dtypes,
offsets that tile the data exactly, sizes that match the shapes), and the tensors are then
compared with the signed manifest's list (``verify.py``, check 8).

Example:
    >>> import tempfile, torch
    >>> from streamtrain.snapshot.payload import encode_state
    >>> payload, _ = encode_state({"w": torch.arange(6.0).reshape(2, 3)})
    >>> file = tempfile.TemporaryFile()
    >>> _ = file.write(payload)
    >>> file.flush()
    >>> mapped = MappedPayload(file, len(payload))
    >>> target = torch.zeros(2, 3)
    >>> copy_released(target, mapped.tensors["w"])
    >>> target[1].tolist()
    [3.0, 4.0, 5.0]
"""

from __future__ import annotations

import json
import math
import mmap
import os
import weakref
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

import torch

from streamtrain.snapshot.payload import CodecError

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_BLOCK_BYTES = 4 * 1024 * 1024  # copied (and released) at a time
# Mappings alive now, so a tensor can be traced back to the pages it views.
_LIVE: weakref.WeakValueDictionary[int, MappedPayload] = weakref.WeakValueDictionary()


class MappedPayload:
    """``file`` (``size`` bytes of safetensors) mapped copy-on-write; ``tensors`` view it.

    The mapping is never written (copy-on-write only so torch gets a writable buffer); pages
    dropped with :meth:`release` are read from the file again if touched later. The caller
    may close ``file`` once this exists: it keeps a descriptor of its own (for
    :meth:`copy_to`), closed when it is collected.
    """

    def __init__(self, file: BinaryIO, size: int) -> None:
        if size < 8:
            raise CodecError(f"payload is {size} bytes: not a safetensors file")
        file.flush()
        self._fd = os.dup(file.fileno())
        weakref.finalize(self, os.close, self._fd)
        self.size = size
        self._map = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY)
        whole = torch.frombuffer(self._map, dtype=torch.uint8)
        self._base = whole.data_ptr()
        self.tensors = _views(self._map, whole, size)
        _LIVE[id(self)] = self

    def release(self, start: int, end: int) -> None:
        """Drop this process's pages of the byte range [start, end) of the mapping."""
        page = mmap.PAGESIZE
        lo = max(0, start - start % page)
        hi = min(self.size, -(-end // page) * page)
        if hi > lo:
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def release_all(self) -> None:
        self.release(0, self.size)

    def owns(self, address: int) -> bool:
        return self._base <= address < self._base + self.size

    def copy_to(self, path: str | os.PathLike[str]) -> None:
        """Write the payload to ``path`` (kernel copy, no user-space buffer), fsync-ed."""
        with open(path, "wb") as out:
            done = 0
            while done < self.size:
                sent = os.sendfile(out.fileno(), self._fd, done, self.size - done)
                if sent == 0:
                    raise OSError(f"payload file ended after {done} of {self.size} bytes")
                done += sent
            out.flush()
            os.fsync(out.fileno())


def _views(mapping: mmap.mmap, whole: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Parse and validate the header; one view per tensor (a copy for empty ones)."""
    length = header_length(mapping[:8], size)
    start = 8 + length
    views: dict[str, torch.Tensor] = {}
    for span in parse_header(mapping[8:start], size - start):
        if span.end == span.begin:
            views[span.name] = torch.empty(span.shape, dtype=span.dtype)
            continue
        raw = whole[start + span.begin : start + span.end]
        try:
            views[span.name] = raw.view(span.dtype).view(span.shape)
        except RuntimeError:  # not aligned for its dtype: a copy (small, rare)
            views[span.name] = raw.clone().view(span.dtype).view(span.shape)
    return views


class Span(NamedTuple):
    """One tensor of a safetensors header: its bytes are ``[begin, end)`` of the data part."""

    name: str
    dtype: torch.dtype
    shape: list[int]
    begin: int
    end: int


def header_length(first8: bytes, size: int) -> int:
    """The JSON header's length from a ``size``-byte payload's first 8 bytes, validated."""
    length = int.from_bytes(first8, "little")
    if len(first8) != 8 or length > min(_MAX_HEADER, size - 8):
        raise CodecError(f"header length {length} does not fit a {size}-byte payload")
    return length


def parse_header(raw: bytes, data: int) -> list[Span]:
    """The tensors a safetensors JSON header ``raw`` lists over ``data`` bytes of tensor data,
    validated as safetensors does (known dtypes, sizes that match the shapes, offsets that
    tile the data exactly), in data order."""
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, not JSON, or an integer of more than 4300 digits;
        # RecursionError: arrays nested thousands deep. Both come from the topic's bytes.
        raise CodecError(f"header is not JSON: {type(exc).__name__}: {exc}") from exc
    if not isinstance(header, dict):
        raise CodecError("header is not a JSON object")
    header.pop("__metadata__", None)
    spans: list[Span] = []
    for name, entry in header.items():
        dtype, shape, begin, end = _entry(name, entry)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != math.prod(shape) * itemsize or not 0 <= begin <= end <= data:
            raise CodecError(f"tensor {name!r}: offsets {begin}..{end} do not fit its shape")
        if begin == end:
            try:  # an empty tensor is made, not viewed (``_views``, the fill): it must be one
                torch.empty(shape, dtype=dtype)
            except (RuntimeError, TypeError, ValueError) as exc:
                # other sizes that overflow torch's int64 (``[0, 10**30]``)
                problem = f"shape {shape!r} is not one torch can make"
                raise CodecError(f"tensor {name!r}: {problem}") from exc
        spans.append(Span(name, dtype, shape, begin, end))
    spans.sort(key=lambda span: (span.begin, span.end))
    position = 0
    for span in spans:
        if span.begin != position:
            raise CodecError(f"tensor {span.name!r} does not start where the previous one ended")
        position = span.end
    if position != data:
        raise CodecError(f"tensors cover {position} of the {data} data bytes")
    return spans


def _entry(name: str, entry: object) -> tuple[torch.dtype, list[int], int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CodecError(f"tensor {name!r}: header entry is not dtype/shape/data_offsets")
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    shape, offsets = entry["shape"], entry["data_offsets"]
    if dtype is None:
        raise CodecError(f"tensor {name!r}: dtype {entry['dtype']!r} is not supported")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CodecError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
    ):
        raise CodecError(f"tensor {name!r}: data_offsets {offsets!r} are not two integers")
    return dtype, shape, offsets[0], offsets[1]


def _owner(tensor: torch.Tensor) -> MappedPayload | None:
    if tensor.device.type != "cpu" or tensor.numel() == 0:
        return None
    address = tensor.data_ptr()
    return next((m for m in list(_LIVE.values()) if m.owns(address)), None)


def _blocks(tensor: torch.Tensor) -> list[slice]:
    """Slices of the flattened tensor of about ``_BLOCK_BYTES`` each."""
    step = max(1, _BLOCK_BYTES // max(1, tensor.element_size()))
    return [slice(i, i + step) for i in range(0, tensor.numel(), step)]


def copy_released(target: torch.Tensor, source: torch.Tensor, non_blocking: bool = False) -> None:
    """``target.copy_(source)``; when ``source`` views a mapped payload, block by block, each
    block's pages dropped as soon as it is copied, so the copy never holds the file in RSS
    (blocking then: the pages must be read before they are dropped)."""
    owner = _owner(source)
    if owner is None or not (target.is_contiguous() and source.is_contiguous()):
        target.copy_(source, non_blocking=non_blocking)
        return
    flat_target, flat_source = target.view(-1), source.view(-1)
    for block in _blocks(flat_source):
        piece = flat_source[block]
        flat_target[block].copy_(piece)
        _release(owner, piece, flat_source)


def blocks_released(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The flattened ``tensor`` block by block (about 4 MiB each); when it views a mapped
    payload, each block's pages are dropped once the consumer asks for the next one, so a
    pass over it holds one block in RSS, not the tensor (a dynamic table's base mapping
    check reads ``slot_ids`` this way, several times)."""
    owner = _owner(tensor)
    flat = tensor.reshape(-1)
    for block in _blocks(flat):
        piece = flat[block]
        yield piece
        if owner is not None:
            _release(owner, piece, flat)


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in ``tensor``, judged block by block (a mapped source's pages dropped
    after each): the check costs one block of memory, not a bool per element.

    Each block is judged by its minimum and maximum: ``torch.aminmax`` propagates NaN (its
    documented contract) and an Inf is the minimum or the maximum, so both finite means
    every element is. One vectorised reduction, no temporary: ``isfinite(...).all()`` made
    a bool per element and took 5x as long (0.30 s against 0.06 s for 0.26 GB of float32,
    one thread), most of a base's load into the slot (bench/README.md, Delta snapshots)."""
    if not tensor.dtype.is_floating_point:
        return True  # integers have no NaN or Inf
    owner = _owner(tensor)
    flat = tensor.reshape(-1)
    for block in _blocks(flat):
        piece = flat[block]
        low, high = torch.aminmax(piece)
        finite = bool(torch.isfinite(low)) and bool(torch.isfinite(high))
        if owner is not None:
            _release(owner, piece, flat)
        if not finite:
            return False
    return True


def _release(owner: MappedPayload, piece: torch.Tensor, whole: torch.Tensor) -> None:
    """Drop ``piece``'s pages and, again, the block of ``whole`` before it (never before
    ``whole``'s start): a fault at a block's start
    may map the page cache's whole large folio (ext4 keeps them since Linux 6.16), pages of
    the block already dropped among them. Measured in ``bench/delta.py --modes dynamic`` at
    1 GB (Linux 6.18): a tenth of every block stayed mapped, 0.1 GB of the table until the
    payload was unmapped, without the second drop."""
    start = piece.data_ptr() - owner._base
    behind = max(whole.data_ptr() - owner._base, start - _BLOCK_BYTES)
    owner.release(behind, start + piece.numel() * piece.element_size())
