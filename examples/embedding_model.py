"""A user model plugin with a row-sparse embedding table: ``embedding_model:build_id_embedding``.

The first ``id_features`` dense features carry integer IDs (as floats, exact below 2**24);
each is looked up in one ``nn.EmbeddingBag(sparse=True)`` table, summed, and added to a linear
term over the remaining features. Because the table's gradients are sparse, the trainer's
delta snapshots carry only the rows a batch touched (``docs/snapshots.md``); any model built
this way gets deltas, nothing here is special to streamtrain. Train it with an optimizer that
accepts sparse gradients (``sgd`` without momentum, ``adagrad``).

>>> from streamtrain.sample.spec import SampleSpec
>>> spec = SampleSpec(feature_shape=(4,), task="regression")
>>> model = build_id_embedding(spec, {"rows": 100, "dim": 8, "id_features": 2})
>>> model(torch.tensor([[3.0, 7.0, 0.5, 1.0]])).shape
torch.Size([1, 1])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from streamtrain.sample.spec import SampleSpec


class IdEmbeddingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int = Field(1000, ge=1, description="Rows of the embedding table (IDs wrap modulo).")
    dim: int = Field(16, ge=1, description="Width of one row.")
    id_features: int = Field(1, ge=1, description="Leading features that hold IDs.")


class IdEmbedding(nn.Module):
    def __init__(self, spec: SampleSpec, params: IdEmbeddingParams) -> None:
        super().__init__()
        if spec.feature_size <= params.id_features:
            raise ValueError(
                f"id_features={params.id_features} leaves no dense feature of "
                f"{spec.feature_size}; use fewer ID features"
            )
        self.rows = params.rows
        self.id_features = params.id_features
        outputs = {"multiclass": spec.num_classes, "binary": 1}.get(spec.task, spec.target_dim)
        self.table = nn.EmbeddingBag(params.rows, params.dim, mode="sum", sparse=True)
        self.project = nn.Linear(params.dim, outputs)
        self.dense = nn.Linear(spec.feature_size - params.id_features, outputs)
        self._binary = spec.task == "binary"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        ids = x[:, : self.id_features].to(torch.int64).remainder(self.rows)
        out: torch.Tensor = self.project(self.table(ids)) + self.dense(x[:, self.id_features :])
        return out.squeeze(-1) if self._binary else out


def build_id_embedding(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    return IdEmbedding(spec, IdEmbeddingParams.model_validate(dict(params)))
