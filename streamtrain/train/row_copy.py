"""Copy-on-write per row: one large tensor copied in row chunks while its rows keep changing.

Used by the trainer's background copy of a whole snapshot (``snapshot_copy.py``, rules 2-3:
``param`` is the live parameter, ``target`` the snapshot's tensor) and by the publisher's
stream of a base from its copy of the weights (``snapshot/shadow.py`` rule 4: no ``target``,
each chunk read into a bounce buffer and put right with ``take_below``). Whoever changes rows
calls ``save`` first; the copying thread moves ``copied`` on only once a chunk is read, so a
save that reads ``copied`` saves every row the copy has not read yet (the trainer's step hook
reads it without a lock, ``snapshot_copy.py``; the publisher's folds under the stream's lock,
which ``take_below`` needs). A row saved before its first change keeps
its value at the snapshot's version, which ``undo`` (or ``take_below``) writes back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class RowCopy:
    """One background tensor of a copy in progress (rules 2-3); also the publisher's stream
    of its shadow into a base (``snapshot/shadow.py``), where ``param`` is the shadow tensor
    and there is no ``target``: each chunk goes through a bounce buffer (``take_below``)."""

    name: str
    param: torch.Tensor
    target: torch.Tensor | None
    sparse: bool
    version: int  # the parameter's version counter after its last step
    rows_per_chunk: int
    copied: int = 0  # rows [0, copied) are in ``target``
    saved: torch.Tensor | None = None  # per row: already in the undo log
    log_index: list[torch.Tensor] = field(default_factory=list)
    log_values: list[torch.Tensor] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.param.shape[0])

    @property
    def done(self) -> bool:
        return self.copied >= self.rows

    def copy_rows(self, start: int, stop: int, into: torch.Tensor | None = None) -> None:
        """Rule 2 for rows [start, stop) (the copy thread, without the lock): into the
        target, or ``into`` (a stream's bounce buffer, ``stop - start`` rows)."""
        if into is None:
            assert self.target is not None, "a streamed copy reads into a bounce buffer"
            into = self.target[start:stop]
        with torch.no_grad():
            into.copy_(self.param.detach()[start:stop])  # torch releases the GIL meanwhile

    def track_saved(self, lock: threading.Lock) -> None:
        """Give ``save`` its per-row bitmap (one byte a row: 16 MB at 16M rows), so a row is
        saved once however many steps change it. Called by the thread that copies, before
        its first chunk, allocated without ``lock`` (the one ``save`` runs under) and handed
        over under it: allocated and zeroed by the first save on the training thread, it was
        the largest single pause of a first snapshot (O(rows): 1.7 ms at 1 GB, 3.1 at 2)."""
        if self.saved is not None:
            return
        saved = torch.zeros(self.rows, dtype=torch.bool)
        with lock:
            if self.saved is None:
                self.saved = saved

    def save(self, index: torch.Tensor) -> None:
        """Rule 3: keep the current values of rows ``index`` not copied nor saved yet. Before
        ``track_saved`` a row changed by several steps is saved by each (the undo log keeps
        the oldest, as for any row saved twice). A row named twice in ``index`` is saved
        twice with the same value: cheaper than sorting ``index`` to drop it."""
        saved = self.saved  # read once: the copy thread may finish (undo) meanwhile
        index = index[index >= self.copied]
        if index.numel() == 0:
            return
        if saved is not None:
            index = index[~saved[index]]
            if index.numel() == 0:
                return
            saved[index] = True
        self._log(index, self.param.detach().index_select(0, index))

    def save_rest(self) -> None:
        """Rule 3 for a step that may change any row: every row not copied yet, saved now."""
        start, self.copied = self.copied, self.rows
        self._log(torch.arange(start, self.rows), self.param.detach()[start:].clone())

    def _log(self, index: torch.Tensor, values: torch.Tensor) -> None:
        self.log_index.append(index)
        self.log_values.append(values)

    def take_below(self, stop: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The undo log's entries for rows under ``stop``, oldest first, taken out of it
        (a stream's chunk ends at ``stop``: no entry for those rows is made after
        ``copied`` reached it, and none is needed after they are put right)."""
        taken: list[tuple[torch.Tensor, torch.Tensor]] = []
        kept_index: list[torch.Tensor] = []
        kept_values: list[torch.Tensor] = []
        for index, values in zip(self.log_index, self.log_values, strict=True):
            below = index < stop
            if bool(below.any()):
                taken.append((index[below], values[below]))
                index, values = index[~below], values[~below]
            if index.numel():
                kept_index.append(index)
                kept_values.append(values)
        self.log_index, self.log_values = kept_index, kept_values
        return taken

    def undo(self) -> None:
        """The end of rule 3: saved rows back to their values at the snapshot step. Newest
        entries first, so a row saved twice ends with its first (oldest) saved value."""
        assert self.target is not None, "a streamed copy puts its chunks right one by one"
        with torch.no_grad():
            entries = zip(self.log_index, self.log_values, strict=True)
            for index, values in reversed(list(entries)):
                self.target.index_copy_(0, index, values)
        self.log_index, self.log_values, self.saved = [], [], None
