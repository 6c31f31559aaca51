"""bench/ctr_churn.py: dynamic tables are sized to the hashed table's bytes, every streamtrain
learner of the churn bench runs on a short stream, and taking turns changes no prediction (no
timing is asserted)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from tests.module_files import load_file

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    return load_file(BENCH / f"{name}.py", name)  # ctr_churn imports ctr_runs by this name


def test_dynamic_tables_fit_the_hashed_tables_bytes() -> None:
    _load("ctr_runs")
    churn = _load("ctr_churn")
    for fallback, admit_after in ((1, 1), (1, 2), (128, 2)):
        capacity = churn.dynamic_capacity(1024, 16, fallback, admit_after)
        filter_bytes = 32 * capacity if admit_after > 1 else 0
        used = (capacity + fallback) * 8 * 16 + 24 * capacity + filter_bytes
        assert used <= 1024 * 8 * 16 < used + 8 * 16 + 24 + 32


def test_churn_learners_predict_and_beat_a_constant() -> None:
    ctr = _load("ctr_runs")
    churn = _load("ctr_churn")
    s = ctr.make_stream(3000, seed=1, users=800, items=100, new_item_every=4)
    args = type("Args", (), {"rows": 256, "dim": 8, "admit_after": 2})()
    constant = ctr._log_loss(s.y, np.full(len(s.y), s.y.mean()))
    marks: list[int] = []
    for tables in ({}, churn._dynamic(args, "lru", 1), churn._dynamic(args, "lfu", 32)):
        params = churn._dlrm(8, tables, 256)
        result = ctr.run_streamtrain("dlrm", params, 0.05, s, 32, marks.append)
        assert ((result.probs >= 0) & (result.probs <= 1)).all()
        half = len(s.y) // 2
        assert ctr._log_loss(s.y[half:], result.probs[half:]) < constant
    assert marks[-1] == 3000  # the probe saw every batch


def test_taking_turns_changes_no_prediction_and_times_every_learner() -> None:
    """The bench's table runs its learners taking turns in a shuffled order: each learner's
    predictions are those it makes alone, whatever the turns (size, order), and each is given
    CPU time of its own."""
    ctr = _load("ctr_runs")
    churn = _load("ctr_churn")
    s = ctr.make_stream(1000, seed=2, users=300, items=60, new_item_every=4)
    args = type("Args", (), {"rows": 128, "dim": 8, "admit_after": 2})()
    named = {
        "hashed": churn._dlrm(8, {}, 128),
        "lru": churn._dlrm(8, churn._dynamic(args, "lru", 1), 128),
        "lfu": churn._dlrm(8, churn._dynamic(args, "lfu", 1), 128),
    }
    alone = {
        name: ctr.run_streamtrain("dlrm", params, 0.05, s, 32).probs
        for name, params in named.items()
    }
    rounds: list[int] = []
    for turn, seed in ((1, 0), (3, 5)):
        results = churn.taking_turns(s, 32, named, turn, rounds.append, seed)
        assert [r.name for r in results] == list(named)
        for result in results:
            assert np.array_equal(result.probs, alone[result.name]), (result.name, turn)
            assert result.seconds > 0
    assert rounds[-1] == 1000 and len(rounds) == 32 + 11  # ceil(1000/32), ceil(32/3) rounds
