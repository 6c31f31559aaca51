"""The benchmark helper in bench/train_step.py keeps working (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from streamtrain.sample.spec import SampleSpec
from tests.module_files import load_file

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_step.py"


def _load() -> ModuleType:
    return load_file(BENCH, "bench_train_step")


def test_bare_step_rate_runs_by_steps_and_by_seconds() -> None:
    bench = _load()
    spec = SampleSpec(feature_shape=(16,), task="binary")
    by_steps = bench.bare_step_rate("mlp", spec, 32, 5, torch.device("cpu"), warmup_steps=2)
    by_time = bench.bare_step_rate("linear", spec, 8, 0.05, "cpu", warmup_steps=1)
    assert by_steps > 0 and by_time > 0
