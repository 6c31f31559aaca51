"""tests/threads.py, the helper the threaded tests rely on to fail: a worker's exception is
raised in the test, and a thread that does not end is reported."""

from __future__ import annotations

import threading

import pytest

from tests.threads import Workers


def test_an_assert_in_a_worker_is_raised_at_join() -> None:
    def client(i: int) -> None:
        assert i != 2, f"client {i} got a wrong answer"

    workers = Workers()
    for i in range(4):
        workers.start(client, i)
    with pytest.raises(AssertionError, match="client 2 got a wrong answer"):
        workers.join(5)
    assert workers.failed


def test_clean_workers_join_and_a_stuck_one_is_named() -> None:
    release = threading.Event()
    workers = Workers()
    workers.start(lambda: None)
    workers.start(release.wait)
    with pytest.raises(AssertionError, match="threads still running"):
        workers.join(0.05)
    assert workers.alive and not workers.failed
    release.set()
    workers.join(5)
    assert not workers.alive
