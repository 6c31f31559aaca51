"""bench/ctr.py's learners keep working on a short stream (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ctr.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ctr", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ctr"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_every_learner_predicts_probabilities_and_the_models_learn() -> None:
    pytest.importorskip("river")
    pytest.importorskip("vowpalwabbit")
    bench = _load()
    s = bench.make_stream(3000, seed=1, users=500, items=200)
    results = [
        bench.run_streamtrain("dlrm", {"rows": 1024, "embedding_dim": 8}, 0.05, s, 32),
        bench.run_streamtrain("fm", {"rows": 1024, "embedding_dim": 4}, 0.05, s, 32),
        bench.run_river_fm(s, 4),
        bench.run_vw(s, 12),
    ]
    constant = bench._log_loss(s.y, np.full(len(s.y), s.y.mean()))
    for result in results:
        assert result.probs.shape == s.y.shape
        assert ((result.probs >= 0) & (result.probs <= 1)).all(), result.name
        assert result.row(s.y).startswith(f"| {result.name} |")
    half = len(s.y) // 2
    for result in results[:2]:  # streamtrain's models beat a constant once warmed up
        assert bench._log_loss(s.y[half:], result.probs[half:]) < constant, result.name
