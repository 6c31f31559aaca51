"""A small row-sparse model trained step by step, for the delta snapshot tests."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from streamtrain.spec import SampleSpec
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.row_tracker import RowTracker
from streamtrain.train.weights import copy_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from embedding_model import build_id_embedding

SPEC = SampleSpec(feature_shape=(4,), task="regression")
PARAMS = {"rows": 500, "dim": 8, "id_features": 2}
FACTORY = "embedding_model:build_id_embedding"


def build_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_id_embedding(SPEC, PARAMS)


class SparseTrainer:
    """A model, SGD on sparse gradients, and a RowTracker: what ``streamtrain train`` runs."""

    def __init__(self, base_every_deltas: int = 1000, seed: int = 0) -> None:
        self.model = build_model(seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.tracker = RowTracker(
            self.model,
            self.optimizer,
            base_every_deltas=base_every_deltas,
            base_every_seconds=1e9,
        )
        self.step = 0
        self._gen = torch.Generator().manual_seed(seed + 1)

    def train(self, steps: int = 1, batch: int = 16) -> None:
        for _ in range(steps):
            ids = torch.randint(0, PARAMS["rows"], (batch, 2), generator=self._gen).float()
            x = torch.cat([ids, torch.randn(batch, 2, generator=self._gen)], dim=1)
            loss = (self.model(x) - 1.0).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.step += 1

    def request(self) -> SnapshotRequest:
        rows = self.tracker.take()
        tensors, ready = copy_weights(self.model, rows)
        return SnapshotRequest(
            version=self.step,
            run_id="run-d",
            tensors=tensors,
            data_watermark=None,
            offsets={},
            created_at=time.time(),
            wait_ready=ready,
            rows=rows,
        )

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
