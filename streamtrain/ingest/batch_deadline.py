"""When a micro-batch is due: at ``max_batch_size`` samples or after ``max_wait_ms``."""

from __future__ import annotations

import time
from collections.abc import Callable


class MicroBatchPolicy:
    """Emit a batch once it holds ``max_batch_size`` samples or ``max_wait_ms`` has passed since
    :meth:`start`, whichever comes first. The clock is injected so tests drive time.

    >>> now = [0.0]
    >>> policy = MicroBatchPolicy(max_batch_size=4, max_wait_ms=50, clock=lambda: now[0])
    >>> policy.start()
    >>> policy.due(3), policy.due(4)
    (False, True)
    >>> now[0] = 0.05
    >>> policy.expired(), policy.due(0), policy.remaining_ms()
    (True, True, 0)
    """

    def __init__(
        self,
        max_batch_size: int,
        max_wait_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self._clock = clock
        self._deadline = clock()

    def start(self) -> None:
        """Begin waiting for a new batch."""
        self._deadline = self._clock() + self.max_wait

    def expired(self) -> bool:
        return self._clock() >= self._deadline

    def due(self, samples: int) -> bool:
        """True once ``samples`` fill a batch or the wait is over."""
        return samples >= self.max_batch_size or self.expired()

    def remaining_ms(self) -> int:
        """Whole milliseconds left to wait (rounded up, so a poll never ends early)."""
        left = self._deadline - self._clock()
        return max(0, int(-(-left * 1000 // 1)))
