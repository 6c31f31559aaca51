"""Threads whose failures fail the test: an ``assert`` or an exception in a worker thread is
re-raised in the test's own thread when the threads are joined, never lost on stderr."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Workers:
    """Start ``target`` in threads; :meth:`join` waits for them and re-raises the first
    exception any of them raised (the others are chained in its notes).

    >>> workers = Workers()
    >>> workers.start(lambda: 1 / 0)
    >>> workers.join(5)
    Traceback (most recent call last):
    ...
    ZeroDivisionError: division by zero
    """

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    def start(self, target: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:  # every failure, assertions included, goes to join
                with self._lock:
                    self._errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        self._threads.append(thread)
        thread.start()

    @property
    def alive(self) -> bool:
        """Whether any thread still runs."""
        return any(t.is_alive() for t in self._threads)

    @property
    def failed(self) -> bool:
        """Whether a thread has raised already (a load loop can stop early on it)."""
        with self._lock:
            return bool(self._errors)

    def join(self, timeout_s: float) -> None:
        """Wait for every thread (``timeout_s`` each); raise what a thread raised, or an
        AssertionError naming the threads still running."""
        for thread in self._threads:
            thread.join(timeout_s)
        with self._lock:
            errors = list(self._errors)
        if errors:
            first = errors[0]
            for other in errors[1:]:
                first.add_note(f"another thread raised too: {other!r}")
            raise first
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"threads still running after {timeout_s} s: {alive}"
