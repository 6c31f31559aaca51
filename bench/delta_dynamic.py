"""``bench/delta.py --modes dynamic``: the same freshness run with a dynamic table.

The model is ``delta.py``'s (one ID feature embedded and summed, a linear term over the dense
features), but its table is a dynamic one (``streamtrain.train.models.dynamic_table``) of
``rows - 1`` owned rows and one fallback row: the same weight bytes as the hashed table, plus
the mapping (24 bytes a row). The mapping is filled with cold IDs (negative, never in the
stream) before the run, so the table is full from the first step and every new ID evicts the
least recently used row: deltas carry mapping changes and reset rows from the first one, and
every step evicts (from the LRU queue's front: no step scans the table).
"""

from __future__ import annotations

import torch
from torch import nn

from streamtrain.sample.sparse_torch import JaggedTensor, SparseInput
from streamtrain.sample.spec import SparseFeature
from streamtrain.train.models.embedding import EmbeddingTables
from streamtrain.train.models.sparse_params import TableSettings
from streamtrain.train.table_upkeep import TableUpkeep


class DynamicIds(nn.Module):
    """x[:, 0] holds an ID (as a float, exact below 2**24); x[:, 1:] the dense features."""

    def __init__(self, rows: int, dim: int, dense: int) -> None:
        super().__init__()
        table = TableSettings(kind="dynamic", capacity=rows - 1, fallback_rows=1)
        self.embeddings = EmbeddingTables(
            [SparseFeature("id", "ids")], dim, rows, pooling={"id": "sum"}, kinds={"ids": table}
        )
        self.project = nn.Linear(dim, 1)
        self.dense = nn.Linear(dense, 1)

    @staticmethod
    def sparse(x: torch.Tensor) -> SparseInput:
        n = x.shape[0]
        ids = x[:, 0].to(torch.int64)
        return {"id": JaggedTensor(ids, torch.arange(n), torch.ones(n))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.embeddings.pooled(self.sparse(x))["id"]
        out: torch.Tensor = self.project(pooled) + self.dense(x[:, 1:])
        return out


def build(rows: int, dim: int, dense: int, fill: bool) -> DynamicIds:
    """The model; ``fill`` (the trainer's) owns every row with a cold ID first."""
    model = DynamicIds(rows, dim, dense)
    if fill:
        cold = -1 - torch.arange(rows - 1)
        model.embeddings.observe(
            {"id": JaggedTensor(cold, torch.arange(rows - 1), torch.ones(rows - 1))}
        )
        model.embeddings.drain_changed_rows()  # the first snapshot is a base: it carries them
    return model


def upkeep(model: nn.Module, optimizer: torch.optim.Optimizer) -> TableUpkeep:
    found = TableUpkeep.find(model, optimizer)
    assert found is not None
    return found
