"""What one step's :meth:`~.dynamic_table.DynamicMapping.observe` did to a dynamic table:
the rows it placed (to reset), the buffers it changed (for deltas), and the counts the
table's metrics export. Its own module so the trainer's upkeep reads it without the mapping."""

from __future__ import annotations

import numpy as np
import torch

from streamtrain.train.models.dynamic_lookup import Int64s

NO_ROWS: Int64s = np.empty(0, dtype=np.int64)
_NO_RESET = torch.empty(0, dtype=torch.int64)  # read only: an Observed that reset no row


class Observed:
    """What one ``observe`` did: rows to reset (``placed``, a host array; ``reset``, the same
    rows as a tensor), rows and filter cells whose buffers changed, rows owned after it, and
    the counts metrics export."""

    __slots__ = (
        "admitted",
        "changed_cells",
        "changed_slots",
        "evicted",
        "owned",
        "placed",
        "refused",
        "step",
    )

    def __init__(self, changed_slots: Int64s, step: int) -> None:
        self.placed = NO_ROWS
        self.changed_slots = changed_slots
        self.changed_cells = NO_ROWS
        self.step = step  # the table's step after this one
        self.owned = 0
        self.admitted = 0
        self.refused = {"filter": 0, "probability": 0, "full": 0}
        self.evicted = {"lru": 0, "lfu": 0, "expired": 0}

    @property
    def reset(self) -> torch.Tensor:
        """``placed`` as a tensor (made when asked: the trainer's upkeep reads ``placed``)."""
        return torch.from_numpy(self.placed) if self.placed.size else _NO_RESET
