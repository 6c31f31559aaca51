"""Many byte strings as two safetensors tensors: one ``uint8`` blob and an ``int64`` tensor
of lengths (the join's state files and the served-quality pairing in them; no pickle).

>>> tensors = {}
>>> pack_bytes(tensors, "ids", [b"a", b"", b"bc"])
>>> unpack_bytes(tensors, "ids")
[b'a', b'', b'bc']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def pack_bytes(tensors: dict[str, npt.NDArray[Any]], name: str, items: Sequence[bytes]) -> None:
    """Store ``items`` as ``tensors[name]`` (the blob) and ``tensors[name + "_lengths"]``."""
    tensors[name] = np.frombuffer(b"".join(items), np.uint8)
    tensors[name + "_lengths"] = np.fromiter(map(len, items), np.int64, len(items))


def unpack_bytes(tensors: Mapping[str, npt.NDArray[Any]], name: str) -> list[bytes]:
    """The byte strings :func:`pack_bytes` stored; ValueError when the lengths do not fit."""
    blob = tensors[name].tobytes()
    lengths = tensors[name + "_lengths"]
    if lengths.size and int(lengths.min()) < 0:
        raise ValueError(f"{name}: a negative length")
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends][: len(ends)]
    total = ends[-1] if ends else 0
    if total != len(blob):
        raise ValueError(f"{name}: lengths add up to {total}, the blob has {len(blob)} bytes")
    return [blob[a:b] for a, b in zip(starts, ends, strict=True)]
