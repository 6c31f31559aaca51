"""Rule 1 of ``snapshot_copy.py``: which of a model's tensors a whole snapshot copies at once
on the training thread, and which a copy thread copies in the background (*background
tensors*), with the modules that announce their row writes outside optimizer steps.

- copied at once: every tensor not on the CPU, a scalar, one under ``min_bytes``, a buffer
  other than below, and every tensor of a module that changes rows outside optimizer steps
  without saying which beforehand (``row_tracker.ReportsRows`` without ``SavesRows``);
- in the background: the other parameters, and the buffers whose rows a ``SavesRows``
  module reports (a dynamic table's mapping). No optimizer step changes such a buffer: like
  a row-sparse parameter without a gradient, a step saves none of its rows. The module
  itself says which rows it is about to change (``row_tracker.py`` rule 6: a dynamic table's
  re-drawn weight rows and its mapping rows), before it changes them, through ``watch``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from streamtrain.train.row_tracker import (
    SavesRows,
    reporting_prefixes,
    row_savers,
    row_sparse_buffers,
    row_sparse_parameters,
)

Changing = Callable[[str, npt.NDArray[np.int64]], None]  # (state name, rows) before a write


@dataclass(frozen=True)
class TensorClasses:
    """Rule 1 for one model (see the module doc)."""

    sparse: frozenset[str]  # background tensors a step changes only at its gradient's rows
    buffers: frozenset[str]  # buffers copied in the background
    outside: tuple[str, ...]  # state-name prefixes copied at once
    savers: tuple[tuple[str, SavesRows], ...]  # rule-6 modules with their prefixes

    @classmethod
    def of(cls, model: nn.Module) -> TensorClasses:
        savers = tuple(row_savers(model))
        saving = {prefix for prefix, _ in savers}
        buffers = frozenset(
            name for name in row_sparse_buffers(model) if name.startswith(tuple(saving))
        )
        return cls(
            sparse=frozenset(row_sparse_parameters(model)) | buffers,
            buffers=buffers,
            outside=tuple(p for p in reporting_prefixes(model) if p not in saving),
            savers=savers,
        )

    def sources(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The live tensors that may be background tensors, by state name."""
        params: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
        return params | {n: b for n, b in model.named_buffers() if n in self.buffers}

    def background(self, name: str, tensor: torch.Tensor, min_bytes: int) -> bool:
        """Whether ``tensor`` (a source, by state name) is copied in the background."""
        return (
            tensor.device.type == "cpu"
            and tensor.dim() >= 1
            and tensor.shape[0] > 0
            and tensor.numel() * tensor.element_size() >= min_bytes
            and not name.startswith(self.outside)
        )

    def watch(self, changing: Changing | None) -> None:
        """Give every rule-6 module ``changing`` (full state names), or take it back (None)."""
        for prefix, module in self.savers:
            module.watch_rows(None if changing is None else _Prefixed(changing, prefix))


class _Prefixed:
    """The function a rule-6 module calls: its state names made the model's. A copy of the
    model (``copy.deepcopy``: a serving slot's, a test's) does not take it along."""

    __slots__ = ("_changing", "_prefix")

    def __init__(self, changing: Changing, prefix: str) -> None:
        self._changing, self._prefix = changing, prefix

    def __call__(self, name: str, rows: npt.NDArray[np.int64]) -> None:
        self._changing(self._prefix + name, rows)

    def __deepcopy__(self, memo: dict[int, object]) -> None:
        return None
