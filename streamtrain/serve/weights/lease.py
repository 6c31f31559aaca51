"""What a request holds while it runs on the weight slot's live copy: the lease and the
counting that lets the loader wait for it (:mod:`streamtrain.serve.weights.slot` has the rules).

:class:`Leases` is the state requests and the loader share, under one condition: which copy is
live, how many requests run on each copy, and whether shared tables are being written (rule 5).
:class:`Held` is ``WeightSlot.acquire``'s context manager, a class rather than a
``contextlib.contextmanager`` generator: entered and left once per forward pass, a generator's
frame, ``next`` and ``send`` cost ~1.5 µs per pass more.

>>> import torch
>>> leases = Leases()
>>> leases.live = ModelCopy(torch.nn.Linear(1, 1))
>>> with Held(leases):
...     pass
Traceback (most recent call last):
...
streamtrain.serve.weights.lease.NotReady: no model weights yet: waiting for the first valid snapshot
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

import torch
from torch import nn

from streamtrain.snapshot.manifest import SnapshotHeader, SnapshotOrder


class NotReady(RuntimeError):
    """No snapshot has been swapped in yet, so there are no weights worth serving."""


@dataclass(frozen=True)
class WeightsInfo:
    """A set of weights in memory: the snapshot it came from and when it went live."""

    header: SnapshotHeader
    swapped_at: float = 0.0  # monotonic seconds

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def run_id(self) -> str:
        return self.header.run_id

    @property
    def data_watermark(self) -> float | None:
        return self.header.data_watermark

    @property
    def snapshot_id(self) -> str:
        return self.header.snapshot_id

    @property
    def order(self) -> SnapshotOrder:
        return self.header.order


class ModelCopy:
    """One copy of the model plus the number of requests currently running on it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # state_dict tensors share storage with the parameters: copy_ into them writes weights.
        self.targets: dict[str, torch.Tensor] = dict(model.state_dict())
        self.in_flight = 0
        self.info: WeightsInfo | None = None


class Lease(NamedTuple):
    """The weights one request (or batch) runs on; valid until the ``acquire`` block exits."""

    model: nn.Module
    info: WeightsInfo


class Leases:
    """The live copy, the rule-5 write flag and the condition that guards both and every
    copy's ``in_flight`` count; the slot changes them only with ``cond`` held."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.writing = False
        self.live: ModelCopy | None = None


class Held:
    """One forward pass's hold on the live copy: counted in on entry, out on exit."""

    __slots__ = ("_copy", "_leases")

    def __init__(self, leases: Leases) -> None:
        self._leases = leases
        self._copy: ModelCopy | None = None

    def __enter__(self) -> Lease:
        leases = self._leases
        with leases.cond:
            while leases.writing:  # rule 5: shared tables are being written
                leases.cond.wait()
            live = leases.live
            if live is None or live.info is None:
                raise NotReady("no model weights yet: waiting for the first valid snapshot")
            live.in_flight += 1
        self._copy = live
        return Lease(live.model, live.info)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        held, cond = self._copy, self._leases.cond
        assert held is not None
        with cond:
            held.in_flight -= 1
            if held.in_flight == 0:
                cond.notify_all()
