"""A base streamed from the publisher's copy (snapshot/shadow.py rule 4): the same bytes,
chunk hashes and manifest digest as a plain copy at its version, while folds change the copy
under it, with no model-sized buffer."""

from __future__ import annotations

import hashlib

import torch

from streamtrain.snapshot.payload import encode_parts, sha256_hex
from streamtrain.snapshot.shadow import ShadowCopy
from streamtrain.train.hooks import SnapshotRequest

ROWS, DIM, CHUNK = 1000, 4, 512  # 16-byte rows: 32 rows a bounce chunk


def _request(
    version: int, tensors: dict[str, torch.Tensor], rows: dict[str, torch.Tensor] | None = None
) -> SnapshotRequest:
    complete = rows is not None  # with rows: a scheduled base the shadow completes
    return SnapshotRequest(version, "r", tensors, None, {}, 0.0, rows=rows, complete=complete)


def _whole(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "table": torch.randn(ROWS, DIM, generator=gen),
        "dense": torch.randn(300, DIM, generator=gen),  # replaced whole by folds
        "bias": torch.randn(3, generator=gen),  # small: copied at once
    }


def _delta(gen: torch.Generator, version: int, index: torch.Tensor) -> SnapshotRequest:
    tensors = {
        "table": torch.randn(index.numel(), DIM, generator=gen),
        "dense": torch.randn(300, DIM, generator=gen),
        "bias": torch.randn(3, generator=gen),
    }
    return _request(version, tensors, rows={"table": index})


def test_a_streamed_base_has_the_bytes_of_a_plain_copy_while_folds_change_its_source() -> None:
    gen = torch.Generator().manual_seed(3)
    shadow = ShadowCopy(chunk_bytes=CHUNK, min_bytes=1024)
    first = _whole(gen)
    shadow.fold(_request(1, first))
    folded = shadow.fold(_delta(gen, 2, torch.tensor([5, 900, 5, 17])))
    assert folded is not None
    expected = {name: tensor.clone() for name, tensor in shadow._tensors.items()}  # type: ignore[union-attr]
    base = shadow.base(folded)
    # the large tensors are the copy's own (streamed), not a copy of them
    assert base.tensors["table"].data_ptr() == first["table"].data_ptr()
    assert set(base.streamed) == {"table", "dense"}

    chunk_bytes = 100  # payload chunks that straddle the bounce chunks and the tensors
    payload, infos = encode_parts(base.tensors, base.streamed)
    digest = hashlib.sha256()
    got: list[bytes] = []
    version = 3
    for chunk in payload.iter_chunks(chunk_bytes, digest):
        got.append(bytes(chunk))
        if len(got) % 40 == 0:  # a fold between chunks: rows behind, at and ahead of the stream
            ahead = torch.randint(0, ROWS, (30,), generator=gen)
            index = torch.cat([ahead, ahead[:5], torch.tensor([0, ROWS - 1])])
            shadow.fold(_delta(gen, version, index))
            version += 1
    shadow.release()
    assert version > 6, "the folds ran while the base was streamed"
    assert not torch.equal(shadow._tensors["table"], expected["table"])  # type: ignore[index]

    plain, plain_infos = encode_parts(expected)
    want = plain.chunks(chunk_bytes)
    assert infos == plain_infos
    assert [sha256_hex(c) for c in got] == [sha256_hex(c) for c in want]
    assert digest.hexdigest() == plain.sha256()
    assert payload.size == plain.size == sum(len(c) for c in got)


def test_rows_saved_for_a_base_are_dropped_as_the_stream_passes_them() -> None:
    gen = torch.Generator().manual_seed(4)
    shadow = ShadowCopy(chunk_bytes=CHUNK, min_bytes=1024)
    shadow.fold(_request(1, _whole(gen)))
    folded = shadow.fold(_delta(gen, 2, torch.tensor([1])))
    assert folded is not None
    base = shadow.base(folded)
    pieces = base.streamed["table"]()
    next(pieces)  # rows [0, 32) read
    shadow.fold(_delta(gen, 3, torch.arange(0, ROWS, 7)))  # saves the rows from 32 on
    row_copy = shadow._copying["table"]  # type: ignore[index]
    saved = sum(int(i.numel()) for i in row_copy.log_index)
    assert saved == len(range(35, ROWS, 7))
    shadow.fold(_delta(gen, 4, torch.arange(0, ROWS, 7)))  # the same rows: saved once only
    assert sum(int(i.numel()) for i in row_copy.log_index) == saved
    for _ in range(10):
        next(pieces)
    left = torch.cat(row_copy.log_index)
    assert int(left.min()) >= row_copy.copied  # entries under the boundary were taken out
    assert left.numel() < saved
    shadow.release()
