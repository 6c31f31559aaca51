"""DirectEngine and the retained versions run short passes on the event loop and long ones on
a worker thread."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import torch

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.inference import DirectEngine, head_for
from streamtrain.serve.weights.retained import RetainedVersions
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.version_fixtures import tiny_regression_model, version_weights


def _threads_used(inline_below_s: float, rows: int, passes: int = 4) -> list[str]:
    model = tiny_regression_model(2)
    slot = WeightSlot(tiny_regression_model(2))
    slot.load(version_weights(model, 1), SnapshotHeader(1, "r"))
    regression = head_for(SampleSpec((2,), "regression"))
    used: list[str] = []

    def head(outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        used.append(threading.current_thread().name)
        return regression(outputs)

    engine = DirectEngine(slot, head, torch.device("cpu"), inline_below_s=inline_below_s)

    async def serve() -> None:
        for _ in range(passes):
            result = await engine.infer(np.ones((rows, 2), dtype=np.float32))
            assert result.info.version == 1 and result.outputs["value"].shape == (rows, 1)

    asyncio.run(serve())
    return used


def test_short_passes_run_on_the_event_loop_once_measured() -> None:
    used = _threads_used(inline_below_s=10.0, rows=1)
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop here
    assert used[0] != loop_thread  # unmeasured: a worker thread
    assert used[1:] == [loop_thread] * 3


def test_long_passes_stay_on_a_worker_thread() -> None:
    loop_thread = threading.current_thread().name
    assert loop_thread not in _threads_used(inline_below_s=0.0, rows=1)
    # The estimate scales with rows: a budget one row fits is exceeded by a million rows.
    used = _threads_used(inline_below_s=1e-3, rows=1)
    assert used[1:] == [loop_thread] * 3
    assert loop_thread not in _threads_used(inline_below_s=1e-3, rows=1_000_000)[1:]


def test_a_retained_version_answers_short_passes_on_the_event_loop_too() -> None:
    """The candidate of a split is a retained version: once measured, its one-row passes
    skip the worker-thread hop as the live engine's do (``PassTimer``, one rule for both)."""
    model = tiny_regression_model(2)
    slot = WeightSlot(tiny_regression_model(2))
    regression = head_for(SampleSpec((2,), "regression"))
    used: list[str] = []

    def head(outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        used.append(threading.current_thread().name)
        return regression(outputs)

    retained = RetainedVersions(slot, tiny_regression_model(2), head, torch.device("cpu"), 2)
    retained.load(version_weights(model, 1), SnapshotHeader(1, "r"))
    retained.load(version_weights(model, 2), SnapshotHeader(2, "r"))

    async def serve() -> list[float]:
        answers = []
        for _ in range(4):
            result = await retained.infer(1, np.ones((1, 2), dtype=np.float32))
            assert result is not None and result.info.version == 1
            answers.append(float(result.outputs["value"][0, 0]))
        return answers

    answers = asyncio.run(serve())
    loop_thread = threading.current_thread().name
    assert used[0] != loop_thread  # unmeasured: a worker thread
    assert used[1:] == [loop_thread] * 3
    assert len(set(answers)) == 1  # the same weights either way
