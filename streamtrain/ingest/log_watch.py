"""Noticing that a partition's log is no longer the one the reader was reading.

A stored position names an offset, not a log. Three ways a log can be replaced under a reader
(a broker back empty on the same address, a deleted and re-created topic, a lost volume), and
how each is caught here, one concept in one place:

1. **Out of range.** Real Kafka answers a fetch beyond the log (or before its start) with
   OFFSET_OUT_OF_RANGE, which the consumer raises
   (:class:`~streamtrain.kafka.errors.OffsetOutOfRange`); the caller resets.
2. **Watermarks.** A broker that came back empty answers with an empty fetch instead: a
   position beyond the fetch response's high watermark, or a high watermark lower than one
   seen before (it never moves back while a log is kept), means the log was replaced
   (:meth:`LogWatch.check`, every poll, free).
3. **Fingerprints.** A new log that grew past the old position before the reader looked passes
   both checks above and would have its first records skipped. So the reader keeps the
   :class:`~streamtrain.sample.record_mark.RecordMark` of the last record it consumed per
   partition and compares it with the record now at that offset
   (:func:`~streamtrain.kafka.mark_check.verify_marks`: one fetch per partition) at start from
   a checkpoint (:meth:`LogWatch.expect`) and after every interruption the process's
   reachability tracker counts (an outage's end, a dropped connection, a topic reported
   missing: :attr:`Reachability.interruptions`). Any difference (timestamp, key or value
   digest, or no record at that offset) means the log was replaced.

Whatever caught it, the caller treats it the same: an offset reset, logged once with what
differed, counted and handled by its policy. Where it stops holding: a replaced log whose
record at the checked offset is byte-identical, timestamp included, is not told apart; nor is
a log replaced and grown past the position between two polls with no interruption any client
reported (a topic deleted and re-created within one fetch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from streamtrain.kafka import RecordConsumer
from streamtrain.kafka.mark_check import VERIFY_TIMEOUT_S, LogVerdict, verify_marks
from streamtrain.kafka.reachability import REACHABILITY
from streamtrain.kafka.records import KafkaRecord, last_per_partition
from streamtrain.sample.record_mark import RecordMark, mark_of

log = logging.getLogger(__name__)

OnOffsetReset = Literal["earliest", "latest", "fail"]


class OffsetResetFailed(RuntimeError):
    """``ingest.on_offset_reset=fail`` and a partition's log lost the trainer's position."""


class LogWatch:
    """Watches the logs of one consumer's partitions for replacement (module docstring).

    >>> watch = LogWatch(consumer, partitions=(0, 1))  # doctest: +SKIP
    >>> watch.check().replaced  # after a poll  # doctest: +SKIP
    {0: 'the high watermark fell from 2000 to 500'}
    """

    def __init__(
        self,
        consumer: RecordConsumer,
        partitions: Sequence[int],
        interruptions: Callable[[], int] = lambda: REACHABILITY.interruptions,
        verify_timeout_s: float = VERIFY_TIMEOUT_S,
    ) -> None:
        self._consumer = consumer
        self._high: dict[int, int] = {}
        self._partitions = tuple(partitions)
        self._interruptions = interruptions
        self._seen = interruptions()
        self._verify_timeout_s = verify_timeout_s
        self._fetched: dict[int, RecordMark] = {}  # the last record fetched, per partition
        self._to_verify: dict[int, RecordMark] = {}

    def forget(self, partitions: Iterable[int]) -> None:
        """After a seek: the next fetch starts a fresh comparison for these partitions."""
        for p in partitions:
            self._high.pop(p, None)
            self._fetched.pop(p, None)
            self._to_verify.pop(p, None)

    def expect(self, marks: Mapping[int, RecordMark]) -> None:
        """After a seek to stored positions: the records at ``marks`` must be the ones read
        before, checked before any record of those partitions is used."""
        for p, mark in marks.items():
            if p in self._partitions:
                self._fetched[p] = mark
                self._to_verify[p] = mark

    def note(self, records: Sequence[KafkaRecord], partitions: npt.NDArray[np.int64]) -> None:
        """Remember the last of ``records`` (one poll's, partition numbers in ``partitions``)
        per partition: the fingerprint checked after the next interruption."""
        for p, last in last_per_partition(partitions).items():
            self._fetched[p] = mark_of(records[last])

    def check(self) -> LogVerdict:
        """After a poll: partitions whose log was replaced, and those not decided yet."""
        now = self._interruptions()
        if now != self._seen:  # an interruption since the last check: every fingerprint
            self._seen = now
            self._to_verify.update(self._fetched)
        verdict = LogVerdict()
        if self._to_verify:
            started = time.perf_counter()
            verdict = verify_marks(
                self._consumer, self._to_verify, self._partitions, self._verify_timeout_s
            )
            decided = sorted(self._to_verify.keys() - verdict.undecided)
            for p in decided:
                del self._to_verify[p]
            log.info(
                "checked the records at the stored positions of partitions %s in %.1f ms: %s",
                decided,
                (time.perf_counter() - started) * 1000,
                f"replaced {sorted(verdict.replaced)}" if verdict.replaced else "unchanged",
            )
        for p, why in self._moved_back().items():
            verdict.replaced.setdefault(p, why)
        return verdict

    def _moved_back(self) -> dict[int, str]:
        moved: dict[int, str] = {}
        for p in self._partitions:
            high = self._consumer.highwater(p)
            if high is None:
                continue
            before = self._high.get(p)
            self._high[p] = high
            position = self._consumer.position(p)
            if position > high:
                moved[p] = f"the log ends at {high}, before the position {position}"
            elif before is not None and high < before:
                moved[p] = f"the high watermark fell from {before} to {high}"
        return moved
