"""Records waiting in the log but none delivered: a trainer starved by its broker.

Lag alone does not tell a stalled broker from a trainer that is merely busy: lag grows in both.
What only a stalled fetch path shows is *no record delivered at all* while the last fetch's
high watermarks say records are there. :class:`StarvationWatch` measures exactly that stretch
and exports it as ``streamtrain_ingest_starved_seconds`` (0 while records flow or the log is
caught up); the trainer logs a WARNING when it passes ``warn_after_s`` and again every
``warn_after_s`` while it lasts, and once more when records flow again. Seen with the embedded
Tansu broker, whose fetch cost grows with its log (docs/operations.md, "The embedded broker").

This is separate from ``streamtrain_ingest_partition_waits_expired`` (one partition lagging
while others deliver) and from the rejected-records condition (records arrive but none is
valid): here nothing arrives at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from streamtrain import metrics

log = logging.getLogger(__name__)


class StarvationWatch:
    """Call :meth:`observe` after every poll with what it delivered and what still waits."""

    def __init__(self, warn_after_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        if warn_after_s <= 0:
            raise ValueError(f"warn_after_s must be > 0, got {warn_after_s}")
        self._warn_after = warn_after_s
        self._clock = clock
        self._since: float | None = None  # first poll that delivered nothing while records waited
        self._warned_at: float | None = None

    @property
    def starved_seconds(self) -> float:
        """How long records have waited with none delivered (0 when not starved)."""
        return 0.0 if self._since is None else self._clock() - self._since

    def observe(self, delivered: int, waiting: int) -> None:
        """``delivered``: records this poll returned; ``waiting``: records known to be in the
        log past the position (high watermark of the last fetch minus position, summed)."""
        now = self._clock()
        if delivered > 0 or waiting <= 0:
            if self._warned_at is not None and self._since is not None:
                log.warning(
                    "records delivered again after %.0f s with none delivered", now - self._since
                )
            self._since = self._warned_at = None
            metrics.INGEST_STARVED_SECONDS.set(0)
            return
        if self._since is None:
            self._since = now
        starved = now - self._since
        metrics.INGEST_STARVED_SECONDS.set(starved)
        last = self._since if self._warned_at is None else self._warned_at
        if now - last >= self._warn_after:
            self._warned_at = now
            log.warning(
                "records waiting but none delivered for %.0f s: %d record(s) past the position "
                "in the log; the broker accepts them but its fetches return nothing "
                "(streamtrain_ingest_starved_seconds; docs/operations.md, 'Training stalled')",
                starved,
                waiting,
            )
