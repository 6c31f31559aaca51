"""Copy model weights off the training tensors for a snapshot without stalling the step."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from streamtrain import metrics
from streamtrain.train.row_tracker import RowTracker
from streamtrain.train.snapshot_copy import SnapshotCopier, StallClock


@dataclass(frozen=True)
class SnapshotCopy:
    """What one snapshot took off the model: ``tensors`` (whole, or only ``rows`` of the
    row-sparse ones), ``wait_ready`` for the copies, whether it is a base the sink completes
    from its own copy (``complete``: rows known, base due by schedule), and ``stall``: the
    training thread's time for it (final once ``wait_ready`` has returned)."""

    tensors: dict[str, torch.Tensor]
    wait_ready: Callable[[], None]
    rows: dict[str, torch.Tensor] | None
    complete: bool
    stall: StallClock = field(default_factory=StallClock)


def take_snapshot(
    model: nn.Module, tracker: RowTracker | None, copier: SnapshotCopier | None = None
) -> SnapshotCopy:
    """The training thread's part of a snapshot, timed (``streamtrain_snapshot_stall_seconds``).

    Only the rows changed since the last snapshot are copied whenever they are known, for a
    delta and for a scheduled base alike. The whole model only when they are not (the first
    snapshot, a model without row-sparse parameters, tracker rules 2-3, a spoiled background
    copy): with a ``copier`` (a CPU model) its large tensors are copied off the training
    thread (``snapshot_copy.py``), otherwise here.
    """
    started = time.perf_counter()
    rows, base = (None, True) if tracker is None else tracker.plan()
    if copier is not None and copier.take_spoiled():
        rows, base = None, True
    if rows is None and copier is not None and copier.applies():
        full = copier.copy(started)
        return SnapshotCopy(full.tensors, full.wait_ready, None, False, full.stall)
    tensors, wait_ready = copy_weights(model, rows)
    stall = StallClock(time.perf_counter() - started)
    metrics.SNAPSHOT_STALL_SECONDS.observe(stall.seconds)
    return SnapshotCopy(tensors, wait_ready, rows, base and rows is not None, stall)


def copy_weights(
    model: nn.Module,
    rows: Mapping[str, torch.Tensor] | None = None,
    only: Collection[str] | None = None,
) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
    """CPU copies of every parameter and buffer, plus a function that waits for them.

    With ``rows`` (a delta, see ``row_tracker.py``), the tensors named there are copied only
    at those row indices, so a delta costs the rows it carries, not the table. With ``only``,
    just those state names (a rank's shard of a snapshot, ``shard_snapshot.py``).

    On CUDA the copies go device -> pinned host memory on a side stream, ordered after the
    work already queued on the current stream, and work queued later on the current stream
    (the next step's in-place updates) runs after them; the returned ``wait_ready``
    synchronises on an event, so only the snapshot publisher's thread ever waits for the copy.
    """
    state = model.state_dict()
    if only is not None:
        state = {name: t for name, t in state.items() if name in only}
    if rows:
        state = {
            name: t.detach().index_select(0, rows[name].to(t.device)) if name in rows else t
            for name, t in state.items()
        }
    first = next(iter(state.values()), None)
    if first is None or first.device.type != "cuda":
        # The selected rows are a fresh copy already: copying them again cost the training
        # thread a second pass over every changed row.
        selected = rows or {}
        return {
            k: v if k in selected else v.detach().to("cpu", copy=True).contiguous()
            for k, v in state.items()
        }, _noop
    device = first.device
    side = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream(device))
    copies: dict[str, torch.Tensor] = {}
    with torch.cuda.stream(side):
        for name, tensor in state.items():
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor.detach(), non_blocking=True)
            # The caching allocator must not reuse the source while the side stream reads it.
            tensor.record_stream(side)
            copies[name] = host
        done = torch.cuda.Event()  # type: ignore[no-untyped-call]
        done.record(side)
    # The next step updates these tensors in place on the current stream; without this its
    # kernels could run while the side stream is still reading them, and the snapshot would
    # mix two steps' weights. The host thread does not wait: only the device orders the work.
    torch.cuda.current_stream(device).wait_stream(side)
    return copies, done.synchronize


def _noop() -> None:
    return None
