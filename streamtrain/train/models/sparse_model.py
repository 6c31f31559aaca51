"""What the models over sparse IDs (``dlrm``, ``fm``) share: their dense input and their tables.

:class:`SparseModel` holds the optional online standardisation of the dense features and the
embedding tables, names the tables' weights as row-sparse (so snapshots send only the rows a
step changed: ``streamtrain.train.row_tracker``) and gives ``forward`` its dense prelude.
A subclass builds its own layers around them in its ``__init__``, in the order it registers
them, so its parameters' order and random initialisation are its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models.embedding import EmbeddingTables, Pooling
from streamtrain.train.models.sparse_params import TableParams
from streamtrain.train.models.standardize import make_standardizer


class SparseModel(nn.Module):
    """Base of the embedding-table models: ``standardize`` (or None) and ``embeddings``."""

    embeddings: EmbeddingTables

    def __init__(self, spec: SampleSpec, params: TableParams) -> None:
        super().__init__()
        self.standardize = make_standardizer(params, (spec.feature_size,))

    @staticmethod
    def tables(
        spec: SampleSpec, params: TableParams, dim: int, pooling: Mapping[str, Pooling]
    ) -> EmbeddingTables:
        """The model's embedding tables, one row of ``dim`` numbers per ID."""
        return EmbeddingTables(
            spec.sparse,
            dim,
            params.rows,
            params.table_rows,
            pooling,
            params.init_std,
            params.tables,
        )

    @property
    def row_sparse_parameters(self) -> list[str]:
        return [f"embeddings.{name}" for name in self.embeddings.row_sparse_parameters]

    def dense_input(self, x: torch.Tensor) -> torch.Tensor:
        """The dense features as ``[n, feature_size]``, standardised when configured."""
        x = x.flatten(1)
        return self.standardize(x) if self.standardize is not None else x
