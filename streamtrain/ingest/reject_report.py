"""Rejected records, said loudly: a rate-limited WARNING summary and the readiness condition
``samples``.

Per-record reasons are DEBUG lines (a bad producer would flood the log), so without a summary a
trainer that dead-letters every record looks idle at the default log level. Two signals:

1. **A WARNING summary**, at the first rejected record and then at most once per
   ``every_s``: how many records were rejected since the last summary, by reason, out of how
   many read, and one example (``topic/partition/offset: reason: detail``). Whatever is left
   is summarised when the source closes.
2. **Readiness**: once records have arrived for ``alarm_after_s`` with none valid, the
   condition ``samples`` fails ``/health/ready`` until a valid sample arrives.

>>> now = [0.0]
>>> seen = {}
>>> report = RejectReport("samples", every_s=10, alarm_after_s=5, clock=lambda: now[0],
...                       condition=lambda name, ok, detail: seen.update({name: ok}))
>>> report.add([], records=3, samples=0); seen
{'samples': True}
>>> now[0] = 6.0; report.tick(); seen
{'samples': False}
>>> report.add([], records=1, samples=1); seen
{'samples': True}
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from streamtrain import health
from streamtrain.ingest.deadletter import Rejection, source_of
from streamtrain.ingest.decode import KafkaRecord

log = logging.getLogger(__name__)

CONDITION = "samples"
_EXAMPLE_CHARS = 300  # a detail quoting a huge record stays one readable line


class RejectReport:
    """Counts rejected records by reason and says so (module docstring); one per source."""

    def __init__(
        self,
        topic: str,
        *,
        every_s: float,
        alarm_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        condition: Callable[[str, bool, str], None] = health.set_condition,
    ) -> None:
        self._topic = topic
        self._every_s = every_s
        self._alarm_after_s = alarm_after_s
        self._clock = clock
        self._condition = condition
        self._by_reason: Counter[str] = Counter()
        self._records = 0  # read since the last summary, valid or not
        self._example = ""
        self._since = clock()
        self._last_summary: float | None = None
        self._invalid_since: float | None = None  # first record of a run with no valid sample
        self._invalid_records = 0
        self._alarmed = False
        condition(CONDITION, True, "no records yet")

    def add(
        self, rejected: Sequence[tuple[KafkaRecord, Rejection]], records: int, samples: int
    ) -> None:
        """One batch cut: its rejected records, and how many records and samples it held."""
        now = self._clock()
        if rejected and not self._by_reason:
            if self._last_summary is None:  # the first summary covers this batch onwards
                self._since, self._records = now, 0
            record, reject = rejected[0]
            self._example = f"{source_of(record)}: {reject}"[:_EXAMPLE_CHARS]
        self._by_reason.update(reject.reason for _, reject in rejected)
        self._records += records
        if samples:
            self._invalid_since, self._invalid_records = None, 0
            if self._alarmed:
                self._alarmed = False
                self._condition(CONDITION, True, "valid samples arrive")
        elif records:
            if self._invalid_since is None:
                self._invalid_since = now
            self._invalid_records += records
        self.tick()

    def tick(self) -> None:
        """Summarise if one is due; raise the readiness alarm if it is due."""
        now = self._clock()
        if self._by_reason and (
            self._last_summary is None or now - self._last_summary >= self._every_s
        ):
            self._summarise(now)
        invalid_since = self._invalid_since
        if invalid_since is not None and now - invalid_since >= self._alarm_after_s:
            self._alarmed = True
            self._condition(
                CONDITION,
                False,
                f"{self._invalid_records} records from {self._topic} in "
                f"{now - invalid_since:.0f} s and none valid (last rejected: {self._example}); "
                "the producer and model.* disagree: read the dead-letter topic",
            )

    def close(self) -> None:
        """Summarise what no summary covered yet."""
        if self._by_reason:
            self._summarise(self._clock())

    def _summarise(self, now: float) -> None:
        rejected = sum(self._by_reason.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in self._by_reason.most_common())
        log.warning(
            "rejected %d of %d records from %s in the last %.0f s (%s); e.g. %s",
            rejected,
            self._records,
            self._topic,
            now - self._since,
            reasons,
            self._example,
        )
        self._by_reason.clear()
        self._records = 0
        self._since = now
        self._last_summary = now
