"""Named sample streams for the demo, the tests and the benchmarks, each with its SampleSpec.

* ``hyperplane`` / ``hyperplane-multiclass``: synthetic rotating-hyperplane classification in
  16 dimensions (2 / 4 classes), seeded, with an abrupt concept change at ``drift_at`` and
  optional gradual rotation. A linear model reaches > 90% accuracy and recovers after drift.
* ``digits``: scikit-learn's 8x8 digit images as ``(1, 8, 8)`` floats in [0, 1], 10 classes,
  reshuffled every pass (needs ``pip install 'streamtrain[datasets]'``).
* ``ctr``: a click stream of user and item IDs (sparse features) with Zipf popularity, new
  items and shifting tastes (:mod:`streamtrain.datasets_ctr`).
* a JSON-lines file (:func:`jsonl`): one JSON sample per line, replayed in a cycle.

>>> info = DATASETS["hyperplane"]
>>> chunk = next(info.iterate(count=5, seed=1))
>>> chunk.features.shape, chunk.labels.dtype.name, info.spec.task
((5, 16), 'int64', 'binary')
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streamtrain.jagged import SparseRows
from streamtrain.spec import SampleSpec, Task


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class SampleChunk:
    """Consecutive samples of a stream; weights/timestamps None = defaults (1, record time)."""

    features: npt.NDArray[np.float32]  # [n, *feature_shape]
    labels: npt.NDArray[np.int64] | npt.NDArray[np.float32]  # [n] or [n, target_dim]
    weights: npt.NDArray[np.float32] | None = None
    timestamps: npt.NDArray[np.float64] | None = None  # NaN = the record timestamp
    sparse: SparseRows | None = None  # sparse ID features, for a spec that declares them

    def __len__(self) -> int:
        return int(self.features.shape[0])


Generator = Callable[[int, int, int], Iterator[SampleChunk]]  # (count, seed, chunk_size)


@dataclass(frozen=True)
class DatasetInfo:
    """A named stream: the SampleSpec a model needs for it, and its generator."""

    name: str
    description: str
    spec: SampleSpec
    generate: Generator

    def iterate(self, count: int, seed: int = 0, chunk_size: int = 1024) -> Iterator[SampleChunk]:
        """``count`` samples in chunks of at most ``chunk_size``, the same for the same seed."""
        if count < 0:
            raise DatasetError(f"count must be >= 0, got {count}")
        return self.generate(count, seed, max(1, chunk_size))


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


def _digits(count: int, seed: int, chunk_size: int) -> Iterator[SampleChunk]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError(
            "the digits dataset needs scikit-learn: pip install 'streamtrain[datasets]'"
        ) from exc
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    targets = data.target.astype(np.int64)
    yield from _cycle(images, targets, None, None, count, seed, chunk_size, shuffle=True)


def _cycle(
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64] | npt.NDArray[np.float32],
    weights: npt.NDArray[np.float32] | None,
    timestamps: npt.NDArray[np.float64] | None,
    count: int,
    seed: int,
    chunk_size: int,
    shuffle: bool,
) -> Iterator[SampleChunk]:
    """``count`` samples cycling over the arrays, reshuffled each pass when ``shuffle``."""
    rng = np.random.default_rng(seed)
    total = len(features)
    if total == 0:
        if count:
            raise DatasetError("the dataset holds no samples")
        return
    order = np.zeros(0, np.int64)
    for start in range(0, count, chunk_size):
        n = min(chunk_size, count - start)
        while len(order) < n:
            fresh = rng.permutation(total) if shuffle else np.arange(total)
            order = np.concatenate([order, fresh])
        take, order = order[:n], order[n:]
        yield SampleChunk(
            features[take],
            labels[take],
            None if weights is None else weights[take],
            None if timestamps is None else timestamps[take],
        )


def jsonl(path: Path, spec: SampleSpec) -> DatasetInfo:
    """Replay a JSON-lines file of samples (the JSON wire format, one per line), validated
    against ``spec`` up front; cycles when asked for more samples than it holds.

    Raises:
        DatasetError: the file cannot be read, or a line is not a valid sample for ``spec``.
    """
    from streamtrain.wire import decode_json

    try:
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from exc
    decoded = decode_json(spec, lines, np.full(len(lines), np.nan))
    if decoded.rejects:
        shown = [f"  line {i + 1}: {r}" for i, r in sorted(decoded.rejects.items())[:5]]
        more = len(decoded.rejects) - len(shown)
        raise DatasetError(
            f"{path}: {len(decoded.rejects)} of {len(lines)} lines are not valid samples for "
            f"feature shape {list(spec.feature_shape)}, task {spec.task}:\n"
            + "\n".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )

    def generate(count: int, seed: int, chunk_size: int) -> Iterator[SampleChunk]:
        yield from _cycle(
            decoded.features,
            decoded.labels,
            decoded.weights,
            decoded.timestamps,
            count,
            seed,
            chunk_size,
            shuffle=False,
        )

    return DatasetInfo(
        name="file",
        description=f"replay of {path} ({len(lines)} samples)",
        spec=spec,
        generate=generate,
    )


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        hyperplane(num_classes=2),
        hyperplane(num_classes=4),
        DatasetInfo(
            name="digits",
            description="scikit-learn 8x8 digits as (1, 8, 8) in [0, 1], 10 classes, shuffled",
            spec=SampleSpec(feature_shape=(1, 8, 8), task="multiclass", num_classes=10),
            generate=_digits,
        ),
    )
}


def get_dataset(name: str) -> DatasetInfo:
    """The dataset called ``name``; the error lists the valid names."""
    if name == "ctr":
        from streamtrain.datasets_ctr import ctr

        return ctr()
    try:
        return DATASETS[name]
    except KeyError:
        valid = ", ".join([*DATASETS, "ctr", "file (with --file)"])
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {valid}") from None


__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetInfo",
    "SampleChunk",
    "get_dataset",
    "hyperplane",
    "jsonl",
]
