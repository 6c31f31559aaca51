"""``dlrm``: dense MLP + embedding tables + pairwise dot interactions (Naumov et al., 2019).

The dense features go through a bottom MLP to one ``embedding_dim`` vector; each sparse
feature pools its rows to another; the dot products of every pair of these vectors, with the
bottom vector itself, feed the top MLP and the output layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field
from torch import nn

from streamtrain.sample.sparse_torch import SparseInput
from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._head import OutputLayer
from streamtrain.train.models._params import parse_params
from streamtrain.train.models.sparse_model import SparseModel
from streamtrain.train.models.sparse_params import TableParams


class DLRMParams(TableParams):
    """Plus the table settings of :class:`TableParams`."""

    bottom_sizes: tuple[int, ...] = Field((64,), description="Hidden widths of the dense MLP.")
    top_sizes: tuple[int, ...] = Field((64, 32), description="Hidden widths after interactions.")


def _mlp(width: int, sizes: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for size in sizes:
        if size < 1:
            raise ValueError(f"layer widths {sizes} must be positive")
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers), width


class DLRM(SparseModel):
    """See the module doc. ``forward(x, sparse)``; ``sparse`` as in
    :mod:`~streamtrain.sample.sparse_torch`.

    >>> from streamtrain.sample.spec import SparseFeature
    >>> from streamtrain.sample.sparse_torch import JaggedTensor
    >>> spec = SampleSpec((3,), "binary", sparse=(SparseFeature("user", "users"),))
    >>> model = DLRM(spec, DLRMParams(rows=50, embedding_dim=4))
    >>> model(torch.zeros(2, 3), {"user": JaggedTensor.from_lists([[7], [8, 9]])}).shape
    torch.Size([2])
    """

    def __init__(self, spec: SampleSpec, params: DLRMParams) -> None:
        super().__init__(spec, params)
        dim = params.embedding_dim
        body, width = _mlp(spec.feature_size, params.bottom_sizes)
        self.bottom = nn.Sequential(body, nn.Linear(width, dim), nn.ReLU())
        self.embeddings = self.tables(spec, params, dim, params.pooling)
        vectors = 1 + len(spec.sparse)
        # the upper triangle of the vectors' Gram matrix, flattened: each pair once
        pairs = torch.triu_indices(vectors, vectors, offset=1)
        self._pairs = (pairs[0] * vectors + pairs[1]).tolist()
        self.top, width = _mlp(dim + len(self._pairs), params.top_sizes)
        self.head = OutputLayer(width, spec)

    def forward(self, x: torch.Tensor, sparse: SparseInput) -> torch.Tensor:
        dense = self.bottom(self.dense_input(x))
        pooled = self.embeddings.pooled(sparse)
        vectors = torch.stack([dense, *pooled.values()], dim=1)  # [n, 1 + features, dim]
        gram = torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)
        dots = gram[:, self._pairs]
        out: torch.Tensor = self.head(self.top(torch.cat([dense, dots], dim=1)))
        return out


def build_dlrm(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    return DLRM(spec, parse_params("dlrm", DLRMParams, params))
