"""A whole mapping's check that no ID owns two rows, in buckets of IDs instead of one sort.

A base's ``slot_ids`` are checked before anything is written (the serving slot's step 1), while
the live weights still serve, so the old ID lookup (16 bytes a row) is alive beside the check.
Sorting a copy of every owned ID held 8 bytes a row more, and reading the mapped payload's
``slot_ids`` another 8 until the payload closed: at 1 GB (3.9M rows) +0.066 x the table on top
of the old lookup, the peak of every base after the first (``bench/dynamic_load_memory.py``).

Here the IDs are split by a hash of each into buckets of about :data:`BUCKET_IDS`: one pass
labels every row with its bucket (1 byte a row), then one pass per bucket gathers and sorts
that bucket's IDs alone. An ID given twice lands twice in one bucket, so it is found there.
The mapping is read block by block each pass (``blocks``: a mapped payload's pages dropped
behind each block, ``snapshot/mapped.blocks_released``), so the check holds 1 byte a row and
one bucket, not the mapping twice. Unevenly hashed IDs only make a bucket larger: at worst
(all in one) this is the old sorted copy again, never more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt
import torch

Int64s = npt.NDArray[np.int64]
BUCKET_IDS = 1 << 20  # IDs sorted at once: 8 MiB
_FREE = 255  # the label of a free row (EMPTY): never gathered
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing's multiplier: top bits well mixed


def _blocks(ids: torch.Tensor) -> Iterable[torch.Tensor]:
    return (ids,)


def id_twice(
    ids: torch.Tensor,
    empty: int,
    blocks: Callable[[torch.Tensor], Iterable[torch.Tensor]] = _blocks,
) -> int | None:
    """An ID that two rows of the int64 mapping ``ids`` own (``empty`` marks a free row, any
    number of them), or None. ``blocks(ids)`` yields ``ids`` flat, piece by piece, in order;
    it is called once per pass."""
    size = ids.numel()
    buckets = max(1, min(_FREE, -(-size // BUCKET_IDS)))
    if buckets == 1:
        pieces = [_owned(piece.numpy(), empty) for piece in blocks(ids)]
        return _first_twice(np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64))
    labels = np.empty(size, dtype=np.uint8)
    counts = np.zeros(_FREE + 1, dtype=np.int64)
    at = 0
    for piece in blocks(ids):
        values = piece.numpy()
        label = labels[at : at + values.size]
        mixed = values.view(np.uint64) * _MIX  # wraps: a hash, not a number
        mixed >>= np.uint64(32)
        mixed %= np.uint64(buckets)
        label[:] = mixed
        label[values == empty] = _FREE
        counts += np.bincount(label, minlength=_FREE + 1)  # per block: it casts to int64
        at += values.size
    for bucket in range(buckets):
        gathered = np.empty(int(counts[bucket]), dtype=np.int64)
        at = filled = 0
        for piece in blocks(ids):
            values = piece.numpy()
            chosen = values[labels[at : at + values.size] == bucket]
            gathered[filled : filled + chosen.size] = chosen
            filled += chosen.size
            at += values.size
        found = _first_twice(gathered)
        if found is not None:
            return found
    return None


def _owned(values: Int64s, empty: int) -> Int64s:
    owned: Int64s = values[values != empty]  # a copy: the block's pages may go
    return owned


def _first_twice(owned: Int64s) -> int | None:
    """The smallest ID ``owned`` holds twice (sorted in place), or None."""
    owned.sort()
    twice = np.flatnonzero(owned[1:] == owned[:-1])
    return int(owned[twice[0]]) if twice.size else None
