"""A dynamic table's changed rows at a snapshot point (``train/models/dynamic_changed.py``,
issue 26): the kept arrays (few rows) and the bitmap scan (many) give the same sorted unique
rows, each row once per take, and nothing from before the previous take."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrain.train.models.dynamic_changed import LIST_SHARE, ChangedRows

SIZE = 100_000


def _rows(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_few_rows_come_back_sorted_unique_and_are_cleared() -> None:
    changed = ChangedRows()
    changed.mark("w", SIZE, _rows(7, 3, 7))
    changed.mark("w", SIZE, _rows(99_999, 3))
    changed.mark("s", SIZE, _rows(5))
    taken = changed.take()
    assert {k: v.tolist() for k, v in taken.items()} == {"w": [3, 7, 99_999], "s": [5]}
    assert changed.take() == {}  # nothing marked since
    changed.mark("w", SIZE, _rows(1))
    assert changed.take()["w"].tolist() == [1]  # 3, 7, 99,999 cleared from the bitmap


def test_many_rows_are_found_by_the_scan_and_the_same_rows_come_back() -> None:
    limit = int(SIZE * LIST_SHARE)
    rng = np.random.default_rng(0)
    marked = [rng.integers(0, SIZE, 40) for _ in range(limit // 10)]  # 4x the kept share
    changed = ChangedRows()
    for rows in marked:
        changed.mark("w", SIZE, rows)
    assert changed._parts["w"] is None  # past the share: the arrays were dropped
    expected = np.unique(np.concatenate(marked))
    taken = changed.take()["w"]
    assert taken.dtype == np.int64
    np.testing.assert_array_equal(taken, expected)
    changed.mark("w", SIZE, _rows(11, 2))  # back to the kept arrays after a take
    assert changed._parts["w"] is not None
    assert changed.take()["w"].tolist() == [2, 11]


def test_an_array_the_caller_writes_again_after_marking_is_not_read_back() -> None:
    changed = ChangedRows()
    rows = _rows(4, 8)
    changed.mark("w", SIZE, rows)
    rows[:] = 0  # observe's arrays may be views it reuses
    assert changed.take()["w"].tolist() == [4, 8]


@pytest.mark.parametrize("count", [1, 50, 5_000])
def test_the_kept_arrays_and_the_scan_agree(count: int) -> None:
    rng = np.random.default_rng(count)
    batches = [rng.integers(0, SIZE, count) for _ in range(3)]
    changed = ChangedRows()
    for rows in batches:
        changed.mark("w", SIZE, rows)
    np.testing.assert_array_equal(changed.take()["w"], np.unique(np.concatenate(batches)))
