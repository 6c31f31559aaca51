"""The join's inputs (predictions, labels) checked against what its state last read from them.

The samples-topic check (:mod:`streamtrain.join.log_lost`) catches a broker that lost the
join's output; an input topic can be replaced on its own (deleted and re-created, restored
from elsewhere) while the samples topic is intact. Each partition state keeps the fingerprint
(:class:`~streamtrain.sample.record_mark.RecordMark`) of the last prediction and the last label
it applied, and checkpoints them with the offsets. At every takeover from a state file and
after every interruption the reachability tracker counts, the record now at each
fingerprint's offset is fetched (one fetch per partition and topic,
:func:`~streamtrain.kafka.mark_check.verify_marks`) and compared:

1. No difference (or no fingerprint yet: a fresh partition, a state file written before
   fingerprints existed): nothing happens.
2. A difference under ``join.on_log_lost=earliest``: that input of that partition is read again
   from the new log's start (WARNING naming the partition and what differed; counted in
   ``streamtrain_join_input_resets_total{topic}``). The partition's pending state and the other
   input carry on; joined samples already emitted stay emitted (their ids are remembered), and
   the records of the new log are each applied once.
3. A difference under ``fail``: :class:`~streamtrain.join.log_lost.JoinLogLost` (exit 6, one
   line).

An undecided check (no answer in time) is tried again at the next interruption or takeover.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from streamtrain import metrics
from streamtrain.join.log_lost import JoinLogLost, OnLogLost
from streamtrain.join.partition_state import PartitionState
from streamtrain.kafka import KafkaConnection, RecordConsumer, record_consumer
from streamtrain.kafka.confluent_records import ConfluentRecord
from streamtrain.kafka.mark_check import LogVerdict, verify_marks
from streamtrain.kafka.reachability import REACHABILITY
from streamtrain.sample.record_mark import RecordMark

log = logging.getLogger(__name__)

Verify = Callable[[str, Mapping[int, RecordMark]], LogVerdict]
"""(topic, partition -> mark) -> what the log holds there."""
Seek = Callable[[int, int, int], None]
"""(partition, predictions offset, labels offset): the group member's seek."""


def kafka_verify(kafka: KafkaConnection) -> Verify:
    """Checks marks with a short-lived reader of the topic (no group, never commits)."""

    def verify(topic: str, marks: Mapping[int, RecordMark]) -> LogVerdict:
        consumer: RecordConsumer = record_consumer(kafka, topic=topic, out_of_range="raise")
        try:
            consumer.assign(sorted(marks))
            for p, mark in marks.items():
                consumer.seek(p, mark.offset + 1)  # a position to come back to
            return verify_marks(consumer, marks)
        finally:
            consumer.close()

    return verify


class InputLogs:
    """Rechecks the predictions and labels logs of the partition states (module docstring)."""

    def __init__(
        self,
        predictions: str,
        labels: str,
        verify: Verify,
        on_log_lost: OnLogLost,
        interruptions: Callable[[], int] = lambda: REACHABILITY.interruptions,
    ) -> None:
        self._predictions = predictions
        self._labels = labels
        self._verify = verify
        self._on_log_lost: OnLogLost = on_log_lost
        self._interruptions = interruptions
        self._seen = interruptions()
        # A closed label set at 0 from the start: increase() sees the first reset.
        metrics.export_at_zero(metrics.JOIN_INPUT_RESETS, [(predictions,), (labels,)])

    def checked(
        self,
        records: list[ConfluentRecord],
        states: Mapping[int, PartitionState],
        seek: Seek,
    ) -> list[ConfluentRecord]:
        """One poll's ``records``, before they are applied: after an interruption, the
        states' inputs are rechecked first (their fingerprints are still those of the records
        read before it); a partition with a replaced input is moved to its states' offsets
        and its records of this poll are dropped (read again from there)."""
        now = self._interruptions()
        if now == self._seen:
            return records
        self._seen = now
        replaced = self.recheck(states)
        if not replaced:
            return records
        for p in replaced:
            seek(p, states[p].predictions_offset, states[p].labels_offset)
        return [r for r in records if r.partition not in replaced]

    def recheck(self, states: Mapping[int, PartitionState]) -> dict[int, tuple[bool, bool]]:
        """Partition -> (predictions replaced, labels replaced) for every partition whose
        input log is not the one its state read; those inputs are reset to offset 0 in the
        states (2.), and the caller moves its consumer there. Raises JoinLogLost (3.)."""
        replaced: dict[int, tuple[bool, bool]] = {}
        for topic in (self._predictions, self._labels):
            marks = {p: m for p, s in states.items() if (m := self._mark(s, topic)) is not None}
            if not marks:
                continue
            verdict = self._verify(topic, marks)
            for p, why in sorted(verdict.replaced.items()):
                self._reset(states[p], topic, why)
                was = replaced.get(p, (False, False))
                is_predictions = topic == self._predictions
                replaced[p] = (was[0] or is_predictions, was[1] or not is_predictions)
        return replaced

    def _mark(self, state: PartitionState, topic: str) -> RecordMark | None:
        return state.predictions_mark if topic == self._predictions else state.labels_mark

    def _reset(self, state: PartitionState, topic: str, why: str) -> None:
        p = state.partition
        if self._on_log_lost == "fail":
            raise JoinLogLost(
                f"{topic} partition {p} is not the log the join read ({why}): a re-created "
                "topic or a broker that lost it, and join.on_log_lost=fail; set "
                "join.on_log_lost=earliest to read the new log from its start"
            )
        metrics.JOIN_INPUT_RESETS.labels(topic=topic).inc()
        log.warning(
            "%s partition %d is not the log the join read (%s): join.on_log_lost=earliest, "
            "so it is read again from its start; the partition's pending state carries on",
            topic,
            p,
            why,
        )
        if topic == self._predictions:
            state.predictions_offset, state.predictions_mark = 0, None
        else:
            state.labels_offset, state.labels_mark = 0, None
