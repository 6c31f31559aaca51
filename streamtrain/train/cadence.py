"""Schedules as one predicate: "every N steps or T seconds", with an injected clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class EveryPolicy:
    """Fires once ``every_steps`` steps or ``every_seconds`` seconds passed since the last fire.

    The clock is injected so tests drive time instead of sleeping.

    >>> now = [0.0]
    >>> policy = EveryPolicy(every_steps=10, every_seconds=5.0, clock=lambda: now[0])
    >>> policy.expired(step=3)
    False
    >>> policy.expired(step=10)
    True
    >>> policy.mark(step=10); now[0] = 6.0
    >>> policy.expired(step=11)
    True
    """

    every_steps: int
    every_seconds: float
    clock: Callable[[], float] = time.monotonic
    _last_step: int = field(default=0, init=False)
    _last_time: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.every_steps < 1 or self.every_seconds <= 0:
            raise ValueError("every_steps must be >= 1 and every_seconds > 0")
        self._last_time = self.clock()

    def expired(self, step: int) -> bool:
        if step <= self._last_step:
            return False
        return (
            step - self._last_step >= self.every_steps
            or self.clock() - self._last_time >= self.every_seconds
        )

    def mark(self, step: int) -> None:
        """Record that the scheduled action ran at ``step``."""
        self._last_step = step
        self._last_time = self.clock()
