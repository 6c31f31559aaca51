"""Which rows of a ``row_wise`` embedding table this rank holds, and the seam to the others.

A table with ``sharding: row_wise`` on rank ``r`` of ``n`` keeps only the global rows ``g``
with ``g % n == r``, stored at local index ``g // n`` (rank ``r`` holds
``ceil((rows - r) / n)`` rows). Modulo rather than contiguous blocks: IDs reach rows through
a hash, so either spreads a step's lookups evenly, but modulo also keeps every rank's share
within one row of the others for any ``rows`` and lets the layout be computed from the row
alone, without a table of block boundaries.

The model reads the layout from ``torch.distributed`` when it is built (the trainer joins the
group first); the lookups of other ranks' rows go through a :class:`RowLookup`, which the
distributed trainer attaches (:mod:`streamtrain.distributed.row_exchange`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ShardLayout:
    """Rank ``rank`` of ``world`` owns the rows ``g`` with ``g % world == rank``.

    >>> layout = ShardLayout(rank=1, world=2)
    >>> layout.local_rows(5), layout.owned(5).tolist()
    (2, [1, 3])
    """

    rank: int
    world: int

    @classmethod
    def current(cls) -> ShardLayout:
        """This process's place in the initialised group; rank 0 of 1 without one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls(0, 1)

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def local_rows(self, rows: int) -> int:
        """How many of a ``rows``-row table's rows this rank holds."""
        return max(0, (rows - self.rank + self.world - 1) // self.world)

    def owned(self, rows: int) -> torch.Tensor:
        """The global rows this rank holds, in local order."""
        return torch.arange(min(self.rank, rows), rows, self.world, dtype=torch.int64)

    def owner(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.remainder(rows, self.world)

    def local(self, rows: torch.Tensor) -> torch.Tensor:
        """The local index of global ``rows`` this rank owns."""
        return torch.div(rows, self.world, rounding_mode="floor")


class RowLookup(Protocol):
    """Rows of a sharded table, wherever they live: ``lookup(weight, rows)`` returns
    ``[len(rows), dim]`` differentiable towards their owners (the exchange carries the
    gradient back in the step's reduction)."""

    def lookup(self, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor: ...

    def lookup_many(
        self, requests: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> list[torch.Tensor]:
        """``lookup`` of each ``(weight, rows)``, all in one exchange (every sharded feature
        of a step at once: a fixed number of collectives, not a few per feature)."""
        ...
