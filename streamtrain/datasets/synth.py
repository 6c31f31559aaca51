"""Synthetic streams: the rotating hyperplane (``hyperplane``, ``hyperplane-multiclass``):
classification in 16 dimensions (2 / 4 classes), seeded, with an abrupt concept change at
``drift_at`` and optional gradual rotation. A linear model reaches > 90% accuracy and
recovers after drift.

>>> chunk = next(hyperplane().iterate(count=5, seed=1))
>>> chunk.features.shape, chunk.labels.dtype.name
((5, 16), 'int64')
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from streamtrain.datasets.base import DatasetError, DatasetInfo, SampleChunk
from streamtrain.sample.spec import SampleSpec, Task


def _unit_rows(rng: np.random.Generator, rows: int, dims: int) -> npt.NDArray[np.float64]:
    m = rng.standard_normal((rows, dims))
    out: npt.NDArray[np.float64] = m / np.linalg.norm(m, axis=1, keepdims=True)
    return out


def _orthogonal_to(rng: np.random.Generator, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    b = _unit_rows(rng, *a.shape)
    b -= (b * a).sum(axis=1, keepdims=True) * a
    out: npt.NDArray[np.float64] = b / np.linalg.norm(b, axis=1, keepdims=True)
    return out


def _concepts(
    rng: np.random.Generator, classes: int, dims: int
) -> list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """Two concepts of (scoring rows, rotation partner rows). When the dimensions allow, all
    rows are orthonormal, so the concept after the drift is unrelated to the one before."""
    if 4 * classes <= dims:
        q, _ = np.linalg.qr(rng.standard_normal((dims, 4 * classes)))
        rows = q.T
        return [
            (rows[k * classes : (k + 1) * classes], rows[(k + 2) * classes : (k + 3) * classes])
            for k in range(2)
        ]
    concepts = []
    for _ in range(2):
        a = _unit_rows(rng, classes, dims)
        concepts.append((a, _orthogonal_to(rng, a)))
    return concepts


def hyperplane(
    num_classes: int = 2,
    dims: int = 16,
    drift_at: int | None = 10_000,
    rotation_per_sample: float = 0.0,
    label_noise: float = 0.02,
    drift_every: int | None = None,
) -> DatasetInfo:
    """A rotating-hyperplane stream: the class is the argmax of ``num_classes`` linear scores.

    At sample index ``drift_at`` the scoring directions are replaced by fresh random ones (an
    abrupt drift: an old model falls to about chance); ``rotation_per_sample`` (radians) turns
    them gradually. ``label_noise`` is the fraction of labels replaced by a random class.
    ``drift_every`` (which replaces ``drift_at``) makes the drift recur: the two concepts take
    turns every ``drift_every`` samples, so a live demo shows a drift every few seconds.

    >>> hyperplane(drift_at=None, drift_every=40_000).description.split(", ")[-1]
    'abrupt drift every 40000 samples (two concepts take turns)'
    """
    if drift_every is not None and drift_every < 1:
        raise DatasetError(f"drift_every must be at least 1 sample, got {drift_every}")
    if not 0 <= label_noise < 1:
        raise DatasetError(f"label_noise must be in [0, 1), got {label_noise}")
    task: Task = "binary" if num_classes == 2 else "multiclass"
    spec = SampleSpec(feature_shape=(dims,), task=task, num_classes=num_classes)

    def generate(count: int, seed: int, chunk_size: int) -> Iterator[SampleChunk]:
        rng = np.random.default_rng(seed)
        concepts = _concepts(rng, num_classes, dims)
        for start in range(0, count, chunk_size):
            n = min(chunk_size, count - start)
            x = rng.standard_normal((n, dims))
            index = np.arange(start, start + n)
            angle = (rotation_per_sample * index)[:, None]
            scores = [np.cos(angle) * (x @ a.T) + np.sin(angle) * (x @ b.T) for a, b in concepts]
            if drift_every is not None:
                after = ((index // drift_every) % 2 == 1)[:, None]
            elif drift_at is not None:
                after = (index >= drift_at)[:, None]
            else:
                after = np.zeros((n, 1), bool)
            labels = np.where(after, scores[1], scores[0]).argmax(axis=1)
            noisy = rng.random(n) < label_noise
            labels[noisy] = rng.integers(0, num_classes, int(noisy.sum()))
            yield SampleChunk(x.astype(np.float32), labels.astype(np.int64))

    if drift_every is not None:
        drift = f"abrupt drift every {drift_every} samples (two concepts take turns)"
    else:
        drift = "no drift" if drift_at is None else f"abrupt drift at sample {drift_at}"
    return DatasetInfo(
        name="hyperplane" if num_classes == 2 else "hyperplane-multiclass",
        description=f"rotating hyperplane, {dims} features, {num_classes} classes, {drift}",
        spec=spec,
        generate=generate,
    )
