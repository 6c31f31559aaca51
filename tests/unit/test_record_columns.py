"""The partition-column helpers of kafka.records against np.unique and a plain scan."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrain.kafka.records import last_per_partition, partitions_in


def _scan(parts: list[int]) -> dict[int, int]:
    last: dict[int, int] = {}
    for i, p in enumerate(parts):
        last[p] = i
    return last


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [0],
        [5, 5, 5],
        [2, 0, 2, 1, 1, 0],
        [0] * 7 + [3] * 4 + [0] * 2 + [11],
    ],
)
def test_partitions_and_their_last_entries(parts: list[int]) -> None:
    column = np.asarray(parts, np.int64)
    assert partitions_in(column) == sorted(set(parts))
    assert last_per_partition(column) == _scan(parts)


def test_random_columns_agree_with_unique_and_a_scan() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        column = rng.integers(0, 40, size=int(rng.integers(1, 300))).astype(np.int64)
        assert partitions_in(column) == np.unique(column).tolist()
        assert last_per_partition(column) == _scan(column.tolist())
