"""``fm``: a factorisation machine (Rendle, 2010) over sparse IDs and dense features.

Every ID and every dense feature ``j`` has a bias and a factor vector; the output is
``b + sum_i w_i x_i + 1/2 * sum_f ((sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2)``, where the
``x_i`` are the ID weights (1 by default) and the dense values. IDs share their table's rows
(bias and factors side by side in one sparse-gradient row), so a step touches only the rows
of its batch. Binary tasks and regression with ``target_dim`` 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from streamtrain.sample.sparse_torch import SparseInput
from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._params import parse_params
from streamtrain.train.models.sparse_model import SparseModel
from streamtrain.train.models.sparse_params import TableParams


class FMParams(TableParams):
    """The table settings of :class:`TableParams`; ``embedding_dim`` is the factor size."""


class FactorizationMachine(SparseModel):
    """See the module doc. ``forward(x, sparse)``; ``sparse`` as in
    :mod:`~streamtrain.sample.sparse_torch`.

    >>> from streamtrain.sample.spec import SparseFeature
    >>> from streamtrain.sample.sparse_torch import JaggedTensor
    >>> spec = SampleSpec((2,), "binary", sparse=(SparseFeature("items", "items"),))
    >>> fm = FactorizationMachine(spec, FMParams(rows=50, embedding_dim=3))
    >>> fm(torch.zeros(2, 2), {"items": JaggedTensor.from_lists([[1, 2], []])}).shape
    torch.Size([2])
    """

    def __init__(self, spec: SampleSpec, params: FMParams) -> None:
        super().__init__(spec, params)
        if spec.task == "multiclass" or spec.target_dim != 1:
            raise ValueError(
                "model 'fm' predicts one number: use task binary, or regression with "
                "target_dim 1 (dlrm handles multiclass)"
            )
        self._column = spec.task == "regression"  # regression outputs are [n, 1]
        k = params.embedding_dim
        # one row per ID: [bias, factors...]; no pooling, each ID's row is used on its own
        self.embeddings = self.tables(spec, params, k + 1, {})
        self.dense_linear = nn.Linear(spec.feature_size, 1)
        self.dense_factors = nn.Parameter(torch.randn(spec.feature_size, k) * params.init_std)

    def forward(self, x: torch.Tensor, sparse: SparseInput) -> torch.Tensor:
        x = self.dense_input(x)
        n = x.shape[0]
        linear = self.dense_linear(x).squeeze(-1)
        sum_v = x @ self.dense_factors  # [n, k]
        sum_sq = (x * x) @ (self.dense_factors * self.dense_factors)
        for rows, bag, ids in self.embeddings.per_id(sparse):
            w = ids.weights.unsqueeze(1)
            bias, factors = rows[:, :1] * w, rows[:, 1:] * w
            linear = linear + torch.zeros(n, device=x.device).index_add(0, bag, bias[:, 0])
            sum_v = sum_v.index_add(0, bag, factors)
            sum_sq = sum_sq.index_add(0, bag, factors * factors)
        out: torch.Tensor = linear + 0.5 * (sum_v * sum_v - sum_sq).sum(dim=1)
        return out.unsqueeze(1) if self._column else out


def build_fm(spec: SampleSpec, params: Mapping[str, Any]) -> nn.Module:
    return FactorizationMachine(spec, parse_params("fm", FMParams, params))
