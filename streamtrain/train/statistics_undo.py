"""Undo a rejected step's folds into the running statistics (issue 33's finding).

:class:`~streamtrain.train.models.standardize.OnlineStandardize` folds each training batch into
its running mean and variance inside ``forward``, before the guard has judged the step. A batch
the guard then rejects (its loss or gradients were not finite) must leave the model exactly as it
was, statistics included: otherwise a finite but huge batch drags the statistics far enough that
the next, ordinary batch also comes out non-finite, and one bad batch costs several steps and a
rollback.

Before each step the statistics are copied into preallocated shadows (one fused copy of a few
per-feature tensors: the statistics are small, and dynamic tables' mapping buffers are not
statistics); a rejected step copies them back.
"""

from __future__ import annotations

import torch
from torch import nn

from streamtrain.train.models.standardize import OnlineStandardize


class StatisticsUndo:
    """Remembers the running statistics of every :class:`OnlineStandardize` in ``modules``."""

    def __init__(self, *modules: object) -> None:
        self._layers = [
            layer
            for module in modules
            if isinstance(module, nn.Module)
            for layer in module.modules()
            if isinstance(layer, OnlineStandardize)
        ]
        self._saved: list[torch.Tensor] = []

    def _live(self) -> list[torch.Tensor]:
        # read each time: moving a model to a device replaces its buffers
        return [b for layer in self._layers for b in (layer.mean, layer.var, layer.count)]

    def remember(self) -> None:
        """Copy the statistics as they are before a step."""
        live = self._live()
        if not live:
            return
        fits = len(self._saved) == len(live) and all(
            s.device == b.device and s.shape == b.shape
            for s, b in zip(self._saved, live, strict=True)
        )
        if fits:
            torch._foreach_copy_(self._saved, live)
        else:  # the first step, or after a move to another device
            self._saved = [b.detach().clone() for b in live]

    def undo(self) -> None:
        """Put back the statistics :meth:`remember` copied (a rejected step)."""
        live = self._live()
        if live and len(live) == len(self._saved):
            with torch.no_grad():
                torch._foreach_copy_(live, self._saved)
