"""Hashed embedding tables that learn sparsely: the sparse half of ``dlrm`` and ``fm``.

Each table named in ``model.sparse`` is one ``nn.EmbeddingBag(rows, dim, sparse=True)``. An ID
(any int64; strings were hashed on the wire) maps to a row by :func:`hash_rows`, a SplitMix64
finaliser mod ``rows``, so consecutive or adversarially-spaced IDs spread evenly and a table
of fixed size takes any number of distinct IDs (with collisions: docs/models.md gives the
measured rate). Fixed tables were chosen over growing, evicting ones (Monolith's collisionless
tables) because they keep the model's tensors a fixed shape: checkpoints, snapshots, delta rows
and the serving slot need no resize protocol. The measured share of IDs that share a row with
another is 1 - exp(-IDs/rows) (22% at rows = 4x the distinct IDs, 63% at rows = IDs; the
table in docs/models.md), and under Zipf popularity most traffic is on IDs that rarely share.

Gradients of the tables are sparse COO tensors over the rows of the batch, so a step reads
and writes only those rows with a row-wise optimizer (Adagrad, or SGD without momentum).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from streamtrain.sparse_tensors import JaggedTensor, SparseInput
from streamtrain.spec import SparseFeature

Pooling = Literal["sum", "mean"]
_MIX1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_MIX2 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX3 = -7723592293110705685  # 0x94D049BB133111EB


def hash_rows(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """Rows in ``[0, rows)`` of int64 ``ids``: SplitMix64's finaliser (64-bit wrap-around
    products, logical shifts emulated by masks), then the non-negative remainder.

    >>> hash_rows(torch.tensor([0, 1, 2, -1]), 10).tolist() == hash_rows(
    ...     torch.tensor([0, 1, 2, -1]), 10).tolist()
    True
    """
    z = ids * _MIX1
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _MIX2
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _MIX3
    z = z ^ ((z >> 31) & ((1 << 33) - 1))
    return torch.remainder(z, rows)


class EmbeddingTables(nn.Module):
    """The tables of ``features`` (``rows`` each unless ``table_rows`` says otherwise) and the
    per-feature pooling: ``sum`` or ``mean`` of the weighted rows of a sample's IDs (a mean
    divides by the sum of the ID weights; a sample without IDs pools to zeros).

    >>> from streamtrain.spec import SparseFeature
    >>> tables = EmbeddingTables([SparseFeature("items", "items")], dim=4, rows=100)
    >>> x = {"items": JaggedTensor.from_lists([[1, 2], [], [3]])}
    >>> tables.pooled(x)["items"].shape
    torch.Size([3, 4])
    """

    def __init__(
        self,
        features: Sequence[SparseFeature],
        dim: int,
        rows: int,
        table_rows: Mapping[str, int] | None = None,
        pooling: Mapping[str, Pooling] | None = None,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if not features:
            raise ValueError(
                "this model embeds sparse ID features: declare them in model.sparse, e.g. "
                "[{name: user, table: users}] (docs/models.md)"
            )
        table_rows = dict(table_rows or {})
        pooling = dict(pooling or {})
        self.features = list(features)
        names = {f.name for f in features}
        tables = {f.table for f in features}
        for name, size in table_rows.items():
            if name not in tables or size < 1:
                raise ValueError(
                    f"table_rows names {name!r}={size}; tables are {sorted(tables)} and need "
                    ">= 1 row"
                )
        for name, mode in pooling.items():
            if name not in names or mode not in ("sum", "mean"):
                raise ValueError(
                    f"pooling {name!r}={mode!r}: use a feature of {sorted(names)} and sum or mean"
                )
        self.pooling = {f.name: pooling.get(f.name, "mean") for f in features}
        self.rows = {t: table_rows.get(t, rows) for t in sorted(tables)}
        for table in tables:
            if not table.isidentifier():
                raise ValueError(
                    f"table name {table!r} must be a Python identifier (letters, digits, _)"
                )
        # "t_" keeps a table called e.g. "items" clear of ModuleDict's own attributes
        self.tables = nn.ModuleDict(
            {
                _key(t): nn.EmbeddingBag(n, dim, mode="sum", sparse=True)
                for t, n in self.rows.items()
            }
        )
        for weight in self._weights():
            nn.init.normal_(weight, std=init_std)
        self.dim = dim

    @property
    def row_sparse_parameters(self) -> list[str]:
        return [f"tables.{key}.weight" for key in self.tables]

    def _weight(self, table: str) -> torch.Tensor:
        bag = self.tables[_key(table)]
        assert isinstance(bag, nn.EmbeddingBag)
        return bag.weight

    def _weights(self) -> list[torch.Tensor]:
        return [self._weight(t) for t in self.rows]

    def _rows(self, feature: SparseFeature, x: JaggedTensor) -> torch.Tensor:
        return hash_rows(x.ids, self.rows[feature.table])

    def pooled(self, sparse: SparseInput) -> dict[str, torch.Tensor]:
        """Per feature, the pooled rows of each sample ``[n, dim]``."""
        out = {}
        for feature in self.features:
            x = sparse[feature.name]
            bag = self.tables[_key(feature.table)]
            total = bag(self._rows(feature, x), x.offsets, per_sample_weights=x.weights)
            if self.pooling[feature.name] == "mean":
                denom = torch.zeros(x.size, device=x.weights.device, dtype=x.weights.dtype)
                denom.index_add_(0, x.bag_index(), x.weights)
                total = total / denom.clamp_min(1e-12).unsqueeze(1)
            out[feature.name] = total
        return out

    def per_id(self, sparse: SparseInput) -> list[tuple[torch.Tensor, torch.Tensor, JaggedTensor]]:
        """Per feature, each ID's row ``[nnz, dim]`` (a sparse-gradient lookup), the sample it
        belongs to ``[nnz]``, and the feature's input."""
        out = []
        for feature in self.features:
            x = sparse[feature.name]
            weight = self._weight(feature.table)
            rows = F.embedding(self._rows(feature, x), weight, sparse=True)
            out.append((rows, x.bag_index(), x))
        return out


def _key(table: str) -> str:
    return "t_" + table
