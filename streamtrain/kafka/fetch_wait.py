"""A fetch wait that widens itself when the broker trickles records out of a long backlog.

The embedded broker (Tansu) lists every record batch of a partition on each Fetch, so once a
partition holds ~20,000+ batches a fetch that may wait only 10 ms (streamtrain's default, for
freshness) returns a few records or none: measured, a consumer at the start of 40,000 one-record
batches got 398 records in 20 s at 10 ms and all 25,000 of a 25,000-batch log in 0.67 s at
250 ms (docs/operations.md, "The embedded broker"). Nothing but the fetch wait is wrong there,
so a trainer started by hand without the broker's suggested settings would otherwise trickle or
starve for as long as it runs.

:class:`FetchWaitTuner` watches what each poll delivered against what the last fetch's high
watermarks say is waiting. When records have waited past the position for a whole
``window_s`` and the polls meanwhile delivered fewer than a fifth of the least that waited
(and fewer than ``trickle_records``; with under five waiting: none at all), it asks the
consumer once for ``widened_ms``. On Apache Kafka that costs nothing: a fetch returns as soon
as any record is there, so the wait only bounds an idle fetch. A consumer that is merely slow
does not trip it as long as it polls at least once a second: its client keeps fetching ahead,
so each poll delivers a full batch (500+ records for a trainer). Used by the trainer's samples
source and by a server's snapshot tail (the join's group consumer keeps its wait).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# The wait the embedded broker's own command suggests (streamtrain.broker.FETCH_MAX_WAIT_MS):
# 250 ms fetches still answered at 80,000 batches (bench/README.md, "Soak").
WIDENED_FETCH_WAIT_MS = 250


class FetchWaitTuner:
    """Call :meth:`observe` after every poll; ``widen(ms)`` is called at most once."""

    def __init__(
        self,
        fetch_max_wait_ms: int,
        widen: Callable[[int], None],
        *,
        widened_ms: int = WIDENED_FETCH_WAIT_MS,
        window_s: float = 2.0,
        trickle_records: int = 1_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0 or trickle_records <= 0:
            raise ValueError(
                f"window_s and trickle_records must be > 0, got {window_s}, {trickle_records}"
            )
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._widen, self._widened_ms = widen, widened_ms
        self._window_s, self._trickle, self._clock = window_s, trickle_records, clock
        self._since: float | None = None  # start of the current stretch with records waiting
        self._delivered = 0
        self._least_waiting = 0

    @property
    def widened(self) -> bool:
        return self.fetch_max_wait_ms >= self._widened_ms

    def observe(self, delivered: int, waiting: int) -> None:
        """``delivered``: records the poll returned; ``waiting``: records past the position
        by the last fetch's high watermarks (summed over partitions)."""
        if self.widened:
            return
        now = self._clock()
        if waiting <= 0:  # caught up: an idle fetch is not a trickle
            self._since = None
            return
        if self._since is None:
            self._since, self._delivered, self._least_waiting = now, 0, waiting
            return
        self._delivered += delivered
        self._least_waiting = min(self._least_waiting, waiting)
        if now - self._since < self._window_s:
            return
        trickle = self._delivered < min(self._least_waiting / 5, self._trickle)
        if trickle:
            log.warning(
                "fetches delivered %d record(s) in %.1f s while at least %d waited: the fetch "
                "wait is raised from %d to %d ms for the rest of the run (a broker whose fetch "
                "cost grows with its log, such as the embedded one: docs/operations.md, "
                "'The embedded broker')",
                self._delivered,
                now - self._since,
                self._least_waiting,
                self.fetch_max_wait_ms,
                self._widened_ms,
            )
            self._widen(self._widened_ms)
            self.fetch_max_wait_ms = self._widened_ms
        self._since, self._delivered, self._least_waiting = now, 0, waiting
