"""A mapped payload's pages are dropped behind a block-by-block read: with each block, the block
before it again (a fault at a block's start may map a large page-cache folio reaching back into
it), never pages before the tensor's own start. Page presence read from /proc/self/pagemap."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from streamtrain.snapshot import mapped
from streamtrain.snapshot.mapped import MappedPayload, all_finite
from streamtrain.snapshot.payload import encode_parts

PAGE = 4096
PAGEMAP = Path("/proc/self/pagemap")


def _present(tensor: torch.Tensor) -> int:
    """Pages of ``tensor`` mapped in this process now."""
    first = tensor.data_ptr() // PAGE
    last = (tensor.data_ptr() + tensor.numel() * tensor.element_size() - 1) // PAGE
    with PAGEMAP.open("rb") as pagemap:
        pagemap.seek(first * 8)
        entries = struct.unpack(f"{last - first + 1}Q", pagemap.read((last - first + 1) * 8))
    return sum(1 for entry in entries if entry >> 63)


@pytest.fixture
def payload(tmp_path: Path) -> MappedPayload:
    if not PAGEMAP.exists():
        pytest.skip("no /proc/self/pagemap (Linux only)")
    block = mapped._BLOCK_BYTES // 4
    parts, _ = encode_parts({"a": torch.ones(block * 2), "b": torch.ones(block * 3)})
    path = tmp_path / "payload.safetensors"
    with path.open("wb") as out:
        for part in parts.parts:
            out.write(part)
    with path.open("rb") as file:
        return MappedPayload(file, path.stat().st_size)


def test_a_block_dropped_drops_the_block_before_it_again_but_not_another_tensor(
    payload: MappedPayload,
) -> None:
    a, b = payload.tensors["a"], payload.tensors["b"]
    block = mapped._BLOCK_BYTES // 4
    assert float(a.sum()) == a.numel() and float(b[:block].sum()) == block  # both read in
    assert _present(a) > 0 and _present(b[:block]) >= block * 4 // PAGE
    mapped._release(payload, b[block : 2 * block], b)  # the second block of b
    assert _present(b[:block]) == 0, "the block before was dropped again"
    assert _present(a[:-PAGE]) >= a[:-PAGE].numel() * 4 // PAGE, "a's pages are not b's"
    mapped._release(payload, b[:block], b)  # the first block: nothing of a before b
    assert _present(a[:-PAGE]) >= a[:-PAGE].numel() * 4 // PAGE


def test_a_finiteness_check_leaves_none_of_the_tensors_pages_mapped(
    payload: MappedPayload,
) -> None:
    b = payload.tensors["b"]
    assert all_finite(b)
    assert _present(b) == 0
