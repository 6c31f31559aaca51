"""A batch's sparse IDs as torch tensors: the input of ``torch.nn.EmbeddingBag``.

Per declared feature a :class:`JaggedTensor`: ``ids`` int64 (every sample's IDs back to back),
``offsets`` int64 ``[n]`` (where each sample's IDs start, ``EmbeddingBag``'s convention) and
``weights`` float32 (one per ID). A model with sparse inputs is called as
``model(features, sparse)`` with ``sparse`` a ``dict[str, JaggedTensor]`` in the order of
``model.sparse`` (docs/models.md).

>>> import numpy as np
>>> from streamtrain.sample.sparse_numpy import Jagged, SparseRows
>>> rows = SparseRows({"items": Jagged(np.array([4, 5, 6]), np.array([2, 1], np.int32),
...                                    np.ones(3, np.float32))})
>>> to_tensors(rows, torch.device("cpu"))["items"].offsets.tolist()
[0, 2]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch

from streamtrain.sample.sparse_numpy import SparseRows

SparseInput = Mapping[str, "JaggedTensor"]


class JaggedTensor(NamedTuple):
    """One sparse feature of ``n`` samples on a device (see the module doc)."""

    ids: torch.Tensor  # int64 [nnz]
    offsets: torch.Tensor  # int64 [n]
    weights: torch.Tensor  # float32 [nnz]

    @property
    def size(self) -> int:
        return int(self.offsets.shape[0])

    def bag_index(self) -> torch.Tensor:
        """The sample each ID belongs to, ``[nnz]``."""
        n, nnz = self.offsets.shape[0], self.ids.shape[0]
        ends = torch.cat([self.offsets[1:], self.offsets.new_tensor([nnz])])
        return torch.repeat_interleave(torch.arange(n, device=self.ids.device), ends - self.offsets)

    @classmethod
    def from_lists(
        cls, rows: list[list[int]], weights: list[list[float]] | None = None
    ) -> JaggedTensor:
        """From one list of IDs per sample (tests, examples, the server)."""
        lengths = [len(r) for r in rows]
        offsets = np.zeros(len(rows), np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        flat_w = [w for ws in weights for w in ws] if weights else [1.0] * sum(lengths)
        return cls(
            torch.tensor([i for r in rows for i in r], dtype=torch.int64),
            torch.from_numpy(offsets),
            torch.tensor(flat_w, dtype=torch.float32),
        )


def to_tensors(rows: SparseRows, device: torch.device) -> dict[str, JaggedTensor]:
    """The jagged columns of a batch as tensors on ``device``."""
    out = {}
    for name, j in rows.features.items():
        offsets = j.offsets[:-1]
        out[name] = JaggedTensor(
            torch.from_numpy(np.ascontiguousarray(j.ids, np.int64)).to(device),
            torch.from_numpy(np.ascontiguousarray(offsets)).to(device),
            torch.from_numpy(np.ascontiguousarray(j.weights, np.float32)).to(device),
        )
    return out
