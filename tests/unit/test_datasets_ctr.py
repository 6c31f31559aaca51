"""The ctr click stream: seeded, Zipf-skewed, with new items and learnable clicks."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrain.datasets import DatasetError, get_dataset
from streamtrain.datasets.ctr import ctr


def _stream(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    users, items, labels = [], [], []
    for chunk in ctr(users=5000, items=2000, new_item_every=20).iterate(count, seed, 500):
        assert chunk.sparse is not None
        users.append(chunk.sparse.features["user"].ids)
        items.append(chunk.sparse.features["item"].ids)
        labels.append(chunk.labels)
    return np.concatenate(users), np.concatenate(items), np.concatenate(labels)


def test_same_seed_same_stream_and_ids_are_spread_over_int64() -> None:
    a, b = _stream(2000, seed=3), _stream(2000, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], _stream(2000, seed=4)[0])
    assert a[0].max() > 5000  # not usable as a table index as they come


def test_popularity_is_zipf_skewed_and_new_items_appear() -> None:
    users, items, labels = _stream(20_000)
    _, counts = np.unique(users, return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[: len(top) // 100].sum() > 0.2 * len(users)  # 1% of users: >20% of impressions
    raw_items = (items - 17) // 1_000_003
    late = raw_items[10_000:]
    assert (late >= 2000).mean() > 0.05  # items created during the stream get shown
    assert (raw_items[:1000] >= 2000).sum() < (late >= 2000).sum()
    assert 0.1 < labels.mean() < 0.9


def test_dataset_is_registered_and_checks_its_settings() -> None:
    assert get_dataset("ctr").spec.sparse_names == ("user", "item")
    with pytest.raises(DatasetError, match="zipf > 0"):
        ctr(zipf=0)
