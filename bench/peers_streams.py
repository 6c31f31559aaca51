"""The benchmark streams, materialised once as arrays so every learner sees the same samples.

These five are the original peers streams, encoded to float32 features in a fixed,
data-independent way (documented ranges, one-hot for categorical integers). The wider suite
(``peers_suite.py``) adds streams fed raw, as a user's records would arrive. River's linear
models standardise on top (StandardScaler), as a river user would, and so do streamtrain's
built-ins with their online standardiser (on by default).

>>> stream = _sea_drift(100, seed=1)
>>> stream.features.shape, stream.num_classes, stream.task
((100, 3), 2, 'binary')
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Stream:
    """One labelled stream: ``features`` [n, d] float32; ``labels`` [n] int64 class indices,
    or float32 targets when ``num_classes`` is 0 (regression)."""

    name: str
    description: str
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64] | npt.NDArray[np.float32]
    num_classes: int

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def feature_count(self) -> int:
        return int(self.features.shape[1])

    @property
    def task(self) -> str:
        if self.num_classes == 0:
            return "regression"
        return "binary" if self.num_classes == 2 else "multiclass"

    @property
    def is_regression(self) -> bool:
        return self.num_classes == 0

    def as_dicts(self) -> list[dict[str, float]]:
        """River's input form: one ``{"x0": value, ...}`` dict per sample."""
        names = [f"x{i}" for i in range(self.feature_count)]
        return [dict(zip(names, row, strict=True)) for row in self.features.tolist()]


def collect(
    samples: Iterable[tuple[Mapping[Any, Any], Any]],
    n: int,
    encode: Callable[[Mapping[Any, Any]], list[float]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The first ``n`` samples as float32 features and int64 labels."""
    x, y = collect_raw(samples, n, encode)
    return x, np.asarray(y, np.int64)


def collect_raw(
    samples: Iterable[tuple[Mapping[Any, Any], Any]],
    n: int,
    encode: Callable[[Mapping[Any, Any]], list[float]],
) -> tuple[npt.NDArray[np.float32], list[Any]]:
    """The first ``n`` samples as float32 features and the labels as they come."""
    rows: list[list[float]] = []
    labels: list[Any] = []
    for x, y in itertools.islice(samples, n):
        rows.append(encode(x))
        labels.append(y)
    if len(rows) < n:
        raise ValueError(f"stream ended after {len(rows)} samples, {n} were asked for")
    return np.asarray(rows, np.float32), labels


def raw_values(row: Mapping[Any, Any]) -> list[float]:
    """A river sample's values as they come, in its own order (the streams fed raw)."""
    return [float(v) for v in row.values()]


def regression(name: str, desc: str, x: npt.NDArray[np.float32], y: list[Any]) -> Stream:
    return Stream(name, desc, x, np.asarray(y, np.float32), 0)


def abrupt(first: Any, second: Any, samples: int) -> Iterator[tuple[Any, Any]]:
    """``first`` for half the stream, then ``second``: a switch between two samples (river's
    ConceptDriftStream with width 1 overflows its sigmoid far from the switch)."""
    half = samples // 2
    return itertools.chain(itertools.islice(first, half), itertools.islice(second, samples - half))


def function_switch(
    name: str,
    desc: str,
    make: Callable[..., Any],
    functions: tuple[int, int],
    samples: int,
    seed: int,
    classes: int,
    encode: Callable[[Mapping[Any, Any]], list[float]] = raw_values,
    **options: Any,
) -> Stream:
    """River generator ``make`` with ``classification_function`` ``functions[0]``, then
    (seeded one apart) ``functions[1]`` from mid-stream: an abrupt concept change."""
    first, second = functions
    gen = abrupt(
        make(classification_function=first, seed=seed, **options),
        make(classification_function=second, seed=seed + 1, **options),
        samples,
    )
    x, y = collect(gen, samples, encode)
    return Stream(name, desc, x, y, classes)


def _hyperplane(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    gen = synth.Hyperplane(
        seed=seed, n_features=10, n_drift_features=5, mag_change=0.001, noise_percentage=0.05
    )
    # features are already uniform in [0, 1]
    x, y = collect(gen, samples, lambda row: [float(row[i]) for i in range(10)])
    desc = "river Hyperplane, 10 features, 5 drifting (mag_change 0.001), 5% label noise"
    return Stream("hyperplane", desc, x, y, 2)


def _sea_drift(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    gen = synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, noise=0.1, seed=seed),
        drift_stream=synth.SEA(variant=3, noise=0.1, seed=seed + 1),
        position=samples // 2,
        width=max(1, samples // 20),
        seed=seed,
    )
    # SEA draws each feature uniformly from [0, 10]
    x, y = collect(gen, samples, lambda row: [float(row[i]) / 10.0 for i in range(3)])
    desc = "river SEA variant 0 -> variant 3 at mid-stream (ConceptDriftStream), 10% noise"
    return Stream("sea_drift", desc, x, y, 2)


# Agrawal's documented ranges; hvalue reaches (8 - zipcode) * 100k * 1.5 <= 1.2M
_AGRAWAL_SCALE = {
    "salary": 150_000.0,
    "commission": 75_000.0,
    "age": 80.0,
    "hvalue": 1_200_000.0,
    "hyears": 30.0,
    "loan": 500_000.0,
}
_AGRAWAL_CATEGORIES = {"elevel": range(0, 5), "car": range(1, 21), "zipcode": range(0, 9)}


def encode_agrawal(row: Mapping[Any, Any]) -> list[float]:
    """Numeric fields divided by their documented maximum; elevel, car, zipcode one-hot.

    >>> len(encode_agrawal({"salary": 1, "commission": 0, "age": 20, "elevel": 0, "car": 1,
    ...                     "zipcode": 0, "hvalue": 1, "hyears": 1, "loan": 0}))
    40
    """
    out = [float(row[name]) / scale for name, scale in _AGRAWAL_SCALE.items()]
    for name, values in _AGRAWAL_CATEGORIES.items():
        out.extend(1.0 if row[name] == v else 0.0 for v in values)
    return out


def _agrawal(samples: int, seed: int) -> Stream:
    from river.datasets import synth

    gen = synth.Agrawal(classification_function=2, seed=seed, perturbation=0.05)
    x, y = collect(gen, samples, encode_agrawal)
    desc = "river Agrawal function 2, 5% perturbation; 6 scaled numeric + 34 one-hot features"
    return Stream("agrawal", desc, x, y, 2)


def _phishing(samples: int, seed: int) -> Stream:
    from river.datasets import Phishing

    del seed  # a fixed, bundled dataset in its published order
    data = Phishing()
    available = data.n_samples
    keys: list[str] = list(next(iter(data))[0])
    x, y = collect(data, min(samples, available), lambda row: [float(row[k]) for k in keys])
    desc = f"river Phishing (bundled), {len(keys)} features in [0, 1], published order"
    return Stream("phishing", desc, x, y, 2)


def _digits(samples: int, seed: int) -> Stream:
    from sklearn.datasets import load_digits

    images, targets = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    passes = -(-samples // len(targets))
    order = np.concatenate([rng.permutation(len(targets)) for _ in range(passes)])[:samples]
    x = (images[order] / 16.0).astype(np.float32)
    y = targets[order].astype(np.int64)
    desc = f"scikit-learn digits (1797 images, 8x8 / 16), {passes} shuffled passes"
    return Stream("digits", desc, x, y, 10)


CLASSIC: dict[str, Callable[[int, int], Stream]] = {
    "hyperplane": _hyperplane,
    "sea_drift": _sea_drift,
    "agrawal": _agrawal,
    "phishing": _phishing,
    "digits": _digits,
}
