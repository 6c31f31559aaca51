"""Jagged sparse features: per feature, the IDs of every sample in one flat array.

A batch of ``n`` samples carries, for each declared sparse feature, ``ids`` (int64, all the
samples' IDs back to back), ``lengths`` (int32 ``[n]``: how many IDs each sample has) and
``weights`` (float32, one per ID; 1 when the producer sent none). This is the layout of
TorchRec's ``KeyedJaggedTensor`` and of ``torch.nn.EmbeddingBag``'s ``input``/``offsets``
/``per_sample_weights``, so a batch reaches the model without a copy per sample.

>>> import numpy as np
>>> j = Jagged(np.array([4, 5, 6, 7]), np.array([1, 0, 3], np.int32), np.ones(4, np.float32))
>>> j[1:].ids.tolist(), j[np.array([True, False, True])].lengths.tolist()
([5, 6, 7], [1, 3])
>>> Jagged.concat([j[:1], j[2:]]).ids.tolist()
[4, 5, 6, 7]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Index = slice | npt.NDArray[np.bool_] | npt.NDArray[np.int64]


@dataclass(frozen=True)
class Jagged:
    """The IDs of one sparse feature for ``len(lengths)`` samples (see the module doc)."""

    ids: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int32]
    weights: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def offsets(self) -> npt.NDArray[np.int64]:
        """Start of each sample's IDs in ``ids``, plus the end: ``[n + 1]``."""
        out = np.zeros(len(self.lengths) + 1, np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    @classmethod
    def empty(cls, n: int = 0) -> Jagged:
        """``n`` samples without IDs."""
        return cls(np.zeros(0, np.int64), np.zeros(n, np.int32), np.zeros(0, np.float32))

    def __getitem__(self, key: Index) -> Jagged:
        """The samples ``key`` picks (a slice, a boolean mask or row indices), in that order."""
        offsets = self.offsets
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self.lengths))
            if step == 1:
                lo, hi = offsets[start], offsets[max(start, stop)]
                return Jagged(self.ids[lo:hi], self.lengths[key], self.weights[lo:hi])
            key = np.arange(start, stop, step)
        rows = np.flatnonzero(key) if key.dtype == np.bool_ else np.asarray(key, np.int64)
        lengths = self.lengths[rows]
        starts = offsets[rows]
        total = int(lengths.sum())
        # position k of the output comes from starts[row] + (k - first output of that row)
        firsts = np.zeros(len(rows), np.int64)
        np.cumsum(lengths[:-1], out=firsts[1:])
        pick = np.repeat(starts - firsts, lengths) + np.arange(total, dtype=np.int64)
        return Jagged(self.ids[pick], lengths, self.weights[pick])

    @classmethod
    def concat(cls, parts: Sequence[Jagged]) -> Jagged:
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.lengths for p in parts]),
            np.concatenate([p.weights for p in parts]),
        )


@dataclass(frozen=True)
class SparseRows:
    """Every declared sparse feature of ``n`` samples, by feature name (spec order)."""

    features: Mapping[str, Jagged]

    def __len__(self) -> int:
        return len(next(iter(self.features.values()))) if self.features else 0

    @classmethod
    def empty(cls, names: Sequence[str], n: int = 0) -> SparseRows:
        return cls({name: Jagged.empty(n) for name in names})

    def __getitem__(self, key: Index) -> SparseRows:
        return SparseRows({name: j[key] for name, j in self.features.items()})

    @classmethod
    def concat(cls, parts: Sequence[SparseRows]) -> SparseRows:
        if len(parts) == 1:
            return parts[0]
        names = list(parts[0].features)
        return cls({name: Jagged.concat([p.features[name] for p in parts]) for name in names})

    @classmethod
    def from_lists(
        cls, names: Sequence[str], rows: Sequence[Mapping[str, tuple[list[int], Any]]]
    ) -> SparseRows:
        """Columns of per-sample ``{name: (ids, weights or None)}`` (absent name: no IDs)."""
        features = {}
        for name in names:
            ids: list[int] = []
            weights: list[float] = []
            lengths = np.zeros(len(rows), np.int32)
            for i, row in enumerate(rows):
                got = row.get(name)
                if got is None:
                    continue
                row_ids, row_weights = got
                ids.extend(row_ids)
                weights.extend([1.0] * len(row_ids) if row_weights is None else row_weights)
                lengths[i] = len(row_ids)
            features[name] = Jagged(
                np.asarray(ids, np.int64).reshape(-1),
                lengths,
                np.asarray(weights, np.float32).reshape(-1),
            )
        return cls(features)
