"""Chunks spooled to a file (snapshot/spool.py) and the verified file mapped as tensors
(snapshot/mapped.py): order, limits, per-chunk digests, a strict header, pages released."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path

import pytest
import torch

from streamtrain.snapshot.mapped import MappedPayload, all_finite, copy_released
from streamtrain.snapshot.payload import CodecError, encode_state, split_chunks
from streamtrain.snapshot.spool import Chunk, Spool


def _pieces(payload: bytes, size: int) -> list[bytes]:
    return [bytes(p) for p in split_chunks(payload, size)]


def test_chunks_in_any_order_make_the_payload() -> None:
    payload = bytes(range(256)) * 5
    pieces = _pieces(payload, 100)
    spool = Spool(max_bytes=len(payload))
    for i in reversed(range(len(pieces))):  # the last chunk first: it waits for the length
        spool.add(Chunk(i, len(pieces), pieces[i]), hashlib.sha256(pieces[i]).hexdigest())
    assert spool.complete(len(pieces))
    assert spool.check(len(pieces), 100, len(payload)) is None
    assert spool.read_all() == payload


@pytest.mark.parametrize(
    "order",
    [
        [0, 1, 2, 3],  # the publisher's order: the digest taken as the chunks came
        [3, 0, 1, 2],  # the last first (it waits for the chunk length)
        [1, 0, 2, 3],
        [0, 1, 1, 2, 3],  # chunk 1 again, now other bytes: the file's second copy counts
    ],
)
def test_the_payload_digest_is_the_files_in_any_order(order: list[int]) -> None:
    payload = bytes(range(256)) * 13  # 3328 bytes: three chunks of 1000 and one of 328
    pieces = _pieces(payload, 1000)
    spool = Spool(max_bytes=len(payload))
    seen: set[int] = set()
    for i in order:
        piece = pieces[i] if i not in seen else bytes(reversed(pieces[i]))
        seen.add(i)
        spool.add(Chunk(i, len(pieces), piece))
    assert spool.check(len(pieces), 1000, len(payload)) is None
    written = spool.read_all()
    assert written == payload or order.count(1) == 2
    assert spool.sha256(len(payload)) == hashlib.sha256(written).hexdigest()


def test_a_chunk_that_differs_from_its_own_digest_is_a_checksum_problem() -> None:
    pieces = _pieces(b"x" * 300, 100)
    spool = Spool(max_bytes=300)
    for i, piece in enumerate(pieces):
        digest = hashlib.sha256(piece).hexdigest()
        spool.add(Chunk(i, 3, b"y" * 100 if i == 1 else piece), digest)
    problem = spool.check(3, 100, 300)
    assert problem is not None and problem.reason == "checksum" and "chunk 1" in str(problem)


def test_a_huge_index_writes_nothing_past_the_limit(tmp_path: Path) -> None:
    spool = Spool(max_bytes=1000, directory=tmp_path)
    spool.add(Chunk(0, 2 * 10**9, b"a" * 100))
    spool.add(Chunk(10**8, 2 * 10**9, b"b" * 100))  # would start 10 GB into the file
    assert spool.overflow and spool.nbytes == 100
    assert len(spool.read_all()) == 100


def test_missing_and_foreign_chunks_are_named() -> None:
    spool = Spool(max_bytes=1000)
    spool.add(Chunk(0, 3, b"a" * 10))
    spool.add(Chunk(2, 3, b"c" * 5))
    missing = spool.check(3, 10, 25)
    assert missing is not None and missing.reason == "incomplete" and "first: 1" in str(missing)
    spool.add(Chunk(1, 4, b"b" * 10))  # another count: another snapshot's chunk
    foreign = spool.check(3, 10, 25)
    assert foreign is not None and foreign.reason == "corrupt"


def _mapped(tensors: dict[str, torch.Tensor]) -> MappedPayload:
    payload, _ = encode_state(tensors)
    with tempfile.TemporaryFile() as file:  # the mapping keeps a descriptor of its own
        file.write(payload)
        return MappedPayload(file, len(payload))


def test_mapped_tensors_are_the_saved_ones_and_copy_in_blocks() -> None:
    big = torch.randn(3_000_000)  # 12 MB: several 4 MiB blocks
    mapped = _mapped({"big": big, "small": torch.arange(5), "empty": torch.zeros(0, 3)})
    assert torch.equal(mapped.tensors["small"], torch.arange(5))
    assert mapped.tensors["empty"].shape == (0, 3)
    target = torch.empty_like(big)
    copy_released(target, mapped.tensors["big"])
    assert torch.equal(target, big)
    assert all_finite(mapped.tensors["big"])


def _rss_file_kib() -> int:
    match = re.search(r"^RssFile:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match is not None
    return int(match.group(1))


def test_a_copy_from_the_mapping_leaves_its_pages_released() -> None:
    mapped = _mapped({"big": torch.ones(16_000_000)})  # 64 MB
    before = _rss_file_kib()
    target = torch.empty(16_000_000)
    copy_released(target, mapped.tensors["big"])
    assert _rss_file_kib() - before < 16 * 1024  # not the 64 MB the copy read


def test_a_non_finite_value_is_found_in_any_block() -> None:
    values = torch.zeros(3_000_000)
    values[-1] = float("nan")
    assert not all_finite(_mapped({"v": values}).tensors["v"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_nan_and_inf_are_found_at_either_end_of_any_block(dtype: torch.dtype) -> None:
    """The check judges a block by its min and max (``torch.aminmax``): a NaN, +Inf or -Inf
    anywhere — first element, either side of a block boundary, the last element of the
    last (partial) block — makes the tensor non-finite, mapped or in memory."""
    per_block = 4 * 1024 * 1024 // torch.empty((), dtype=dtype).element_size()
    clean = torch.randn(2 * per_block + 3).to(dtype)  # two whole blocks and a partial one
    assert all_finite(clean) and all_finite(_mapped({"v": clean}).tensors["v"])
    for position in (0, per_block - 1, per_block, 2 * per_block + 2):
        for bad in (float("nan"), float("inf"), float("-inf")):
            values = clean.clone()
            values[position] = bad
            assert not all_finite(values), (position, bad)
            assert not all_finite(_mapped({"v": values}).tensors["v"]), (position, bad)


def test_integer_tensors_are_always_finite() -> None:
    assert all_finite(torch.arange(-5, 5)) and all_finite(torch.zeros(0))


@pytest.mark.parametrize(
    "header",
    [
        {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},  # size != shape
        {"t": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}},  # unknown dtype
        {"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},  # a gap before it
        {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}},
    ],
)
def test_a_header_that_does_not_tile_the_data_is_refused(header: dict[str, object]) -> None:
    raw = json.dumps(header).encode()
    payload = len(raw).to_bytes(8, "little") + raw + b"\0" * 8
    with tempfile.TemporaryFile() as file, pytest.raises(CodecError):
        file.write(payload)
        MappedPayload(file, len(payload))


class _TrippingFill:
    """A fill (``ChunkFill``) that trips on its second chunk as a parser might on odd bytes."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.problem: str | None = None

    def write(self, index: int, data: bytes) -> None:
        if self.problem is not None:  # as StandbyFill: nothing more once abandoned
            return
        if index == 1:
            raise RecursionError("maximum recursion depth exceeded")
        self.written.append(index)

    def abandon(self, why: str) -> None:
        self.problem = self.problem or why

    @property
    def complete(self) -> bool:
        return False


def test_a_fill_that_trips_is_abandoned_and_the_read_goes_on() -> None:
    """The fill only saves the copy after the read: an exception in it (raised out of the
    reader, it was taken for a topic outage) abandons the fill, and the spool still takes
    every chunk and makes the payload."""
    payload = bytes(range(256)) * 13
    pieces = _pieces(payload, 1000)
    spool = Spool(max_bytes=len(payload))
    fill = _TrippingFill()
    spool.fill = fill
    for i, piece in enumerate(pieces):
        spool.add(Chunk(i, len(pieces), piece), hashlib.sha256(piece).hexdigest())
    assert fill.written == [0]
    assert fill.problem is not None and "chunk 1 could not be placed" in fill.problem
    assert "RecursionError" in fill.problem
    assert spool.complete(len(pieces)) and spool.read_all() == payload
