"""Rule 6 of ``train/row_tracker.py`` for a dynamic table's mapping: before
:meth:`~.dynamic_table.DynamicMapping.observe` writes rows of its buffers, it names them, so
a snapshot copy in progress (``train/snapshot_copy.py``) saves their values first and copies
the mapping off the training thread. Its own module so the mapping grows by a call per write.
"""

from __future__ import annotations

from streamtrain.train.models.dynamic_lookup import Int64s
from streamtrain.train.row_tracker import RowsChanging

# the buffers each write of observe changes
STAMPS = ("last_seen", "use_count")  # the rows of IDs seen again
OWNERS = ("slot_ids",)  # expired rows
SLOTS = (*OWNERS, *STAMPS)  # rows handed to new IDs
CELLS = ("filter_counts",)  # admission filter cells


class Watch:
    """Calls ``changing(prefix + buffer name, rows)`` for each buffer, when set."""

    __slots__ = ("changing", "prefix")

    def __init__(self, changing: RowsChanging | None = None, prefix: str = "") -> None:
        self.changing, self.prefix = changing, prefix

    def __call__(self, names: tuple[str, ...], rows: Int64s) -> None:
        changing = self.changing
        if changing is not None:
            for name in names:
                changing(self.prefix + name, rows)
