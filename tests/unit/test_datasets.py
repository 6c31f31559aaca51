from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from streamtrain.datasets import DATASETS, DatasetError, get_dataset, hyperplane, jsonl
from streamtrain.sample.spec import SampleSpec


def _arrays(name: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(DATASETS[name].iterate(count, seed=seed, chunk_size=999))
    assert sum(len(c) for c in chunks) == count
    return np.concatenate([c.features for c in chunks]), np.concatenate([c.labels for c in chunks])


@pytest.mark.parametrize("name", ["hyperplane", "hyperplane-multiclass"])
def test_hyperplane_is_learnable_drifts_and_recovers(name: str) -> None:
    x, y = _arrays(name, 16_000, seed=5)  # drift at 10_000
    assert x.shape[1:] == DATASETS[name].spec.feature_shape and x.dtype == np.float32
    chance = 1 / DATASETS[name].spec.num_classes
    before = LogisticRegression(max_iter=300).fit(x[:5000], y[:5000])
    assert before.score(x[5000:10_000], y[5000:10_000]) > 0.85
    assert before.score(x[10_000:], y[10_000:]) < chance + 0.15  # the concept changed
    after = LogisticRegression(max_iter=300).fit(x[10_000:14_000], y[10_000:14_000])
    assert after.score(x[14_000:], y[14_000:]) > 0.85


def test_streams_are_reproducible_per_seed_and_gradual_rotation_changes_labels() -> None:
    a, b, c = (_arrays("hyperplane", 500, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    still = next(hyperplane(drift_at=None, label_noise=0).iterate(3000, seed=1, chunk_size=3000))
    turning = next(
        hyperplane(drift_at=None, label_noise=0, rotation_per_sample=1e-3).iterate(
            3000, seed=1, chunk_size=3000
        )
    )
    np.testing.assert_array_equal(still.labels[:10], turning.labels[:10])
    assert (still.labels[-500:] != turning.labels[-500:]).mean() > 0.2


def test_digits_are_scaled_images_cycled() -> None:
    info = DATASETS["digits"]
    chunks = list(info.iterate(2000, seed=0, chunk_size=1000))
    x = np.concatenate([c.features for c in chunks])
    y = np.concatenate([c.labels for c in chunks])
    assert x.shape == (2000, 1, 8, 8) and x.min() >= 0 and x.max() == 1.0
    assert set(y.tolist()) == set(range(10)) and info.spec.num_classes == 10


def test_jsonl_replays_and_names_bad_lines(tmp_path: Path) -> None:
    spec = SampleSpec(feature_shape=(2,), task="regression")
    good = tmp_path / "good.jsonl"
    good.write_text('{"features":[1,2],"label":0.5,"weight":3}\n\n{"features":[3,4],"label":1}\n')
    chunk = next(jsonl(good, spec).iterate(3, chunk_size=10))
    assert chunk.features.tolist() == [[1, 2], [3, 4], [1, 2]]
    assert chunk.weights is not None and chunk.weights.tolist() == [3, 1, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"features":[1,2],"label":0.5}\n{"features":[1],"label":0.5}\n')
    with pytest.raises(DatasetError, match=r"line 2: bad_shape: features has shape \[1\]"):
        jsonl(bad, spec)
    with pytest.raises(DatasetError, match="cannot read"):
        jsonl(tmp_path / "missing.jsonl", spec)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DatasetError, match="choose one of: hyperplane, hyperplane-multiclass"):
        get_dataset("mnist")


def test_recurring_drift_alternates_the_two_concepts() -> None:
    """Same seed, same features: each period's labels match the stream that holds that concept
    throughout (concept 0: never drifting; concept 1: drifted from sample 0)."""
    from streamtrain.datasets import hyperplane

    def labels(**kwargs: object) -> list[int]:
        info = hyperplane(label_noise=0.0, **kwargs)  # type: ignore[arg-type]
        return [int(v) for v in next(info.iterate(400, seed=3, chunk_size=400)).labels]

    recurring = labels(drift_at=None, drift_every=100)
    first, second = labels(drift_at=None), labels(drift_at=0)
    assert first != second, "the two concepts must disagree somewhere"
    for period in range(4):
        span = slice(period * 100, (period + 1) * 100)
        expected = first if period % 2 == 0 else second
        assert recurring[span] == expected[span], f"period {period} follows the wrong concept"
