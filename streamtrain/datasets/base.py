"""What every dataset is: a named stream of :class:`SampleChunk` with the SampleSpec a model
needs for it (:class:`DatasetInfo`), and the replay of fixed arrays (:func:`cycle`) the
file-backed datasets share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.sample.spec import SampleSpec


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


def cycle(
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
