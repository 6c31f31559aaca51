"""scikit-learn's 8x8 digit images as ``(1, 8, 8)`` floats in [0, 1], 10 classes, reshuffled
every pass (needs ``pip install 'streamtrain[datasets]'``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from streamtrain.datasets.base import DatasetError, DatasetInfo, SampleChunk, cycle
from streamtrain.sample.spec import SampleSpec


def _generate(count: int, seed: int, chunk_size: int) -> Iterator[SampleChunk]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError(
            "the digits dataset needs scikit-learn: pip install 'streamtrain[datasets]'"
        ) from exc
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    targets = data.target.astype(np.int64)
    yield from cycle(images, targets, None, None, count, seed, chunk_size, shuffle=True)


def digits() -> DatasetInfo:
    return DatasetInfo(
        name="digits",
        description="scikit-learn 8x8 digits as (1, 8, 8) in [0, 1], 10 classes, shuffled",
        spec=SampleSpec(feature_shape=(1, 8, 8), task="multiclass", num_classes=10),
        generate=_generate,
    )
