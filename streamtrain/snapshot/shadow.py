"""The publisher's own copy of the weights at its last snapshot: bases without a table copy
on the training thread (double-buffering).

A full snapshot used to copy the whole model on the training thread (1.1 s per GB: training
stopped). Deltas already take only the changed rows; a base due by schedule
(``train.base_every_*``) now does too (``SnapshotRequest.complete``), and the publisher's
thread completes it here:

1. a full request (the first snapshot, or one whose rows were not known) is adopted as the
   copy: its tensors are the sink's own, nothing is copied again;
2. every request with rows, delta or scheduled base, is folded in: its rows scattered into
   the copy, its whole tensors replacing the copy's. Deltas cover every row changed since the
   previous snapshot (``row_tracker.py``), the invariant servers already rely on, so the copy
   is the model at that request's step;
3. a scheduled base is then published as the whole copy, copied again (into the previous
   base's buffers once there is one): the base lane writes it beside the deltas
   (``lanes.py``) while later requests keep folding into the copy.

Requests are folded on the publisher's one thread, in order (superseded ones arrive merged
into the next, ``delta.merge_requests``, which keeps their rows), and a request that fails
to publish is merged into the next and folded again: scattering the same rows twice is
harmless. The cost moves to memory: the trainer holds the model once more, all the time, and
once more again from the first scheduled base on (the base buffers, filled on the
publisher's thread: no stall of the training thread).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import torch

from streamtrain.snapshot.delta import scatter_into
from streamtrain.train.hooks import CopySpoiled, SnapshotRequest

log = logging.getLogger(__name__)


class ShadowCopy:
    """Rules 1-3: ``fold`` each request in order; ``base`` takes a scheduled base from it."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] | None = None
        self._spare: dict[str, torch.Tensor] | None = None  # a written base's, for ``base``

    @property
    def ready(self) -> bool:
        """Whether a whole base can be taken (a full snapshot was adopted)."""
        return self._tensors is not None

    def fold(self, request: SnapshotRequest) -> SnapshotRequest | None:
        """Rules 1-2: ``request`` with its copies complete, folded into the copy; None for a
        scheduled base with no copy to complete it from (it cannot happen after a first full
        snapshot; logged). A copy that could not be completed raises ``CopySpoiled``, and the
        copy kept so far is dropped: later deltas would fold into weights it never had."""
        try:
            request.wait_ready()
        except CopySpoiled:
            self._tensors = None
            raise
        request = dataclasses.replace(request, wait_ready=_ready)  # the copies are complete
        if request.rows is None:
            self._tensors = dict(request.tensors)
            return request
        copy = self._tensors
        if copy is None:
            if request.complete:
                log.error("base %d arrived as rows before any full snapshot", request.version)
                return None
            return request  # a delta with nothing to keep yet: published as it is
        scatter_into(copy, request.tensors, request.rows)
        return request

    def base(self, request: SnapshotRequest) -> SnapshotRequest:
        """Rule 3 for the folded ``request``: the whole copy at its version, copied, so the
        base lane writes it while later requests are folded (``lanes.py``). The copy goes into
        the buffers of the previous base when they were handed back (``reuse``) and still fit:
        a fresh model-sized allocation took seconds on a loaded machine (page faults), a copy
        into memory already mapped a fraction of that."""
        copy = self._tensors
        if copy is None:
            raise RuntimeError("base() before any full snapshot: check ready first")
        spare, self._spare = self._spare, None
        tensors: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, tensor in copy.items():
                into = None if spare is None else spare.get(name)
                if into is not None and into.shape == tensor.shape and into.dtype == tensor.dtype:
                    tensors[name] = into.copy_(tensor)
                else:
                    tensors[name] = tensor.clone()
        return dataclasses.replace(request, tensors=tensors, rows=None, complete=False)

    def reuse(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Hand back a written base's tensors for the next ``base`` to copy into (the caller
        no longer reads them). The trainer then holds them between bases: one model more in
        steady state, no more at the peak (a base being written holds them anyway)."""
        self._spare = dict(tensors)


def _ready() -> None:
    return None
