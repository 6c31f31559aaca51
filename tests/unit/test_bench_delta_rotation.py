"""bench/delta.py --rotate-after-replica: with its clock, RowTracker takes no scheduled base
until the gate opens (the replica has exited), one at once when it does, then one every
--base-every s; the first snapshot is a base as always."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from streamtrain.train.row_tracker import RowTracker

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def delta_rotation() -> Iterator[Any]:
    sys.path.insert(0, str(BENCH))
    try:
        import delta_rotation

        delta_rotation.GATE.clear()
        yield delta_rotation
    finally:
        delta_rotation.GATE.clear()
        sys.path.remove(str(BENCH))


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.tensor([[1, 2]])).sum().backward()
    optimizer.step()


def test_rotations_wait_for_the_gate_then_come_at_once_and_on_schedule(
    delta_rotation: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    model = nn.EmbeddingBag(10, 4, mode="sum", sparse=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    args = argparse.Namespace(rotate_after_replica=True, base_every=40.0)
    tracker = RowTracker(
        model,
        optimizer,
        base_every_deltas=10**9,
        base_every_seconds=args.base_every,
        clock=delta_rotation.clock(args),
    )

    def base_now() -> bool:
        _step(model, optimizer)
        return tracker.plan()[1]

    assert base_now(), "the first snapshot is a base"
    now[0] += 500  # far past --base-every, gate closed: no rotation
    assert not base_now()
    delta_rotation.GATE.set()
    assert base_now(), "the rotation comes as soon as the gate opens"
    now[0] += 39
    assert not base_now()
    now[0] += 1
    assert base_now(), "then every --base-every s"


def test_without_the_option_the_clock_is_monotonic(delta_rotation: Any) -> None:
    args = argparse.Namespace(rotate_after_replica=False, base_every=40.0)
    assert delta_rotation.clock(args) is time.monotonic
