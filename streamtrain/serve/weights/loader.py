"""What the watcher and the delta chain load snapshots into: one Protocol, two implementations
(:class:`~streamtrain.serve.weights.slot.WeightSlot`, and
:class:`~streamtrain.serve.weights.retained.RetainedVersions` in front of it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from streamtrain.serve.weights.slot import WeightsInfo
from streamtrain.snapshot.delta import RowUpdate
from streamtrain.snapshot.manifest import SnapshotHeader, SnapshotManifest, SnapshotOrder
from streamtrain.snapshot.spool import ChunkFill


class SnapshotLoader(Protocol):
    """Takes verified bases and deltas, each with its header whole; refuses with
    ``SnapshotRejected`` (counted by reason) or ``StandbyBusy`` (retry later)."""

    @property
    def info(self) -> WeightsInfo | None: ...

    def is_newer(self, order: SnapshotOrder) -> bool: ...

    def load(
        self,
        tensors: Mapping[str, torch.Tensor],
        header: SnapshotHeader,
        *,
        filled: ChunkFill | None = None,
    ) -> None: ...

    def fill_for(self, manifest: SnapshotManifest) -> ChunkFill | None: ...

    def apply_delta(
        self,
        dense: Mapping[str, torch.Tensor],
        rows: Mapping[str, RowUpdate],
        header: SnapshotHeader,
    ) -> None: ...

    def settled(self) -> bool: ...

    def settle(self) -> None: ...
