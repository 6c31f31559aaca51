"""Triton's classification extension: an output requested with ``class_count = k`` is returned
as a BYTES tensor [n, k] of ``"score:index"`` strings, the k highest scores of each row, highest
first (Triton's format; scores printed with six decimals). ``k`` larger than the number of
classes returns them all.

>>> scores = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
>>> top_k_strings(scores, 2).tolist()
[['0.700000:1', '0.200000:2']]
>>> serialize_bytes(np.array([["ab"]], dtype=object))
b'\\x02\\x00\\x00\\x00ab'
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np


def top_k_strings(values: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, np.dtype[np.object_]]:
    """The ``k`` highest values of each row as ``"score:index"`` strings, shape [n, k]."""
    rows = values.reshape(values.shape[0], -1).astype(np.float64)
    k = min(k, rows.shape[1])
    # A stable sort of the negated scores keeps the lower index first among equal scores.
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    for r, indices in enumerate(order):
        out[r] = [f"{rows[r, i]:f}:{i}" for i in indices]
    return out


def serialize_bytes(strings: np.ndarray[Any, np.dtype[np.object_]]) -> bytes:
    """Triton's raw BYTES layout: each element as a 4-byte little-endian length, then bytes."""
    parts: list[bytes] = []
    for item in strings.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)
