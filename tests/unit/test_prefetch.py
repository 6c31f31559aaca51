from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import pytest

from streamtrain.sample.batch import Batch
from streamtrain.train.prefetch import PrefetchingSource, SourceFailed


def _batch(offset: int) -> Batch:
    return Batch(
        features=np.full((1, 2), offset, np.float32),
        labels=np.zeros(1, np.int64),
        weights=np.ones(1, np.float32),
        timestamps=np.zeros(1, np.float64),
        next_offsets={0: offset + 1},
        records=1,
    )


class CountingSource:
    """Hands out numbered batches and records, from which thread, every consumer call."""

    def __init__(self, limit: int = 1000, fail_at: int | None = None) -> None:
        self.next_offset = 0
        self.limit = limit
        self.fail_at = fail_at
        self.commits: list[dict[int, int]] = []
        self.threads: set[str] = set()
        self.closed = False
        self.fetched = threading.Condition()

    def next_batch(self) -> Batch:
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and self.next_offset == self.fail_at:
            raise ConnectionError("broker went away")
        if self.next_offset >= self.limit:
            return Batch.empty({0: self.next_offset})
        batch = _batch(self.next_offset)
        self.next_offset += 1
        with self.fetched:
            self.fetched.notify_all()
        return batch

    def seek(self, offsets: Mapping[int, int]) -> None:
        self.next_offset = offsets[0]

    def positions(self) -> dict[int, int]:
        return {0: self.next_offset}

    def commit(self, offsets: Mapping[int, int]) -> None:
        self.threads.add(threading.current_thread().name)
        self.commits.append(dict(offsets))

    def close(self) -> None:
        self.closed = True


def test_batches_arrive_in_order_and_queue_is_bounded() -> None:
    source = CountingSource()
    with PrefetchingSource(source, depth=3) as prefetch:
        first = prefetch.get(timeout=5)
        assert first is not None and first.next_offsets == {0: 1}
        with source.fetched:
            source.fetched.wait_for(lambda: source.next_offset >= 4, timeout=5)
        # depth 3 queued + 1 taken + at most 1 held by the thread waiting for room
        assert source.next_offset <= 5
        seen = [prefetch.get(timeout=5) for _ in range(10)]
    assert [b.next_offsets[0] for b in seen if b] == list(range(2, 12))
    assert source.closed


def test_commits_run_on_the_prefetch_thread_newest_wins() -> None:
    source = CountingSource(limit=3)
    prefetch = PrefetchingSource(source, depth=2).start()
    prefetch.request_commit({0: 1})
    prefetch.request_commit({0: 2})
    prefetch.close()
    assert source.commits[-1] == {0: 2}
    assert source.threads == {"streamtrain-prefetch"}


def test_source_error_reaches_the_training_thread() -> None:
    source = CountingSource(fail_at=2)
    with PrefetchingSource(source, depth=4) as prefetch:
        assert prefetch.get(timeout=5) is not None
        assert prefetch.get(timeout=5) is not None
        with pytest.raises(SourceFailed, match="broker went away"):
            prefetch.get(timeout=5)
