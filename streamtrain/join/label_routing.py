"""Labels placed on another partition than their prediction: said loudly, never silently lost.

The join meets a label and its prediction only on the same partition number, so both must be
placed by one rule: :mod:`streamtrain.kafka.partitioner` (murmur2, the Java client's). A label
producer on another rule (librdkafka's default hashes CRC32: kcat, confluent-kafka) puts about
half the keys elsewhere, where no prediction will ever arrive. The join does not move such a
label (re-keying it through a repartition topic, as Kafka Streams does, would add a second
produce and consume to the exactly-once cut); it tells, so the producer can be fixed:

1. On arrival, a keyed label whose partition is not the one murmur2 gives its key is counted
   in ``streamtrain_join_misrouted_labels_total`` and reported in a WARNING naming the rule
   and the setting to fix (at most one line per ``warn_every_s``, with the count since the
   last). It is then joined as usual: if its prediction is there after all (a prediction
   log written by the same other rule), it joins.
2. If it would be dead-lettered as ``unknown_id``, its reason is ``wrong_partition`` instead,
   with the partition murmur2 gives in the detail, so the dead-letter topic says what
   happened and the label can be sent again with the right partitioner.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from streamtrain import metrics
from streamtrain.join.partition_state import WRONG_PARTITION, DeadLetter, SourceRecord
from streamtrain.kafka.group_consumer import CoPartitionedGroup
from streamtrain.kafka.partitioner import KEY_PARTITIONER, LIBRDKAFKA_PARTITIONER, partition_for

log = logging.getLogger(__name__)


class LabelRouting:
    """Checks labels of ``labels_topic`` against the partitioning rule (module docstring).

    ``group`` gives the member whose metadata says how many partitions the topic has (asked
    once, and again after :meth:`refresh`).
    """

    def __init__(
        self,
        labels_topic: str,
        group: Callable[[], CoPartitionedGroup],
        warn_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topic = labels_topic
        self._group = group
        self._count: int | None = None
        self._warn_every_s = warn_every_s
        self._clock = clock
        self._last_warning = -float("inf")
        self._unreported = 0
        self._misrouted = metrics.JOIN_MISROUTED_LABELS

    def refresh(self) -> None:
        """The partition count may have changed (a new assignment): ask again when needed."""
        self._count = None

    def expected(self, record: SourceRecord) -> int | None:
        """The partition the rule gives ``record``'s key, if it is not the one it is on."""
        if record.key is None:
            return None
        if self._count is None:
            self._count = self._group().partition_count(self._topic)
        expected = partition_for(record.key, self._count)
        return None if expected == record.partition else expected

    def arrived(self, record: SourceRecord) -> None:
        """1.: count and (rate-limited) warn about a label on the wrong partition."""
        expected = self.expected(record)
        if expected is None:
            return
        self._misrouted.inc()
        self._unreported += 1
        now = self._clock()
        if now - self._last_warning < self._warn_every_s:
            return
        log.warning(
            "%d label(s) of %s arrived on a partition other than the one %s gives their key "
            "(e.g. key %r on partition %d, expected %d): the label producer partitions by "
            "another rule (librdkafka's default, consistent_random, hashes CRC32). Set "
            "partitioner=%s (kcat -X partitioner=%s; confluent-kafka {'partitioner': '%s'}) "
            "or use the Java client's default partitioner; such labels cannot meet their "
            "predictions and are dead-lettered as %s (docs/labels.md)",
            self._unreported,
            self._topic,
            KEY_PARTITIONER,
            (record.key or b"")[:64],
            record.partition,
            expected,
            LIBRDKAFKA_PARTITIONER,
            LIBRDKAFKA_PARTITIONER,
            LIBRDKAFKA_PARTITIONER,
            WRONG_PARTITION,
        )
        self._last_warning, self._unreported = now, 0

    def dead_letter(self, action: DeadLetter) -> DeadLetter:
        """2.: an ``unknown_id`` label on the wrong partition is a ``wrong_partition`` one."""
        if action.reason != "unknown_id" or action.record.topic != self._topic:
            return action
        expected = self.expected(action.record)
        if expected is None:
            return action
        detail = (
            f"on partition {action.record.partition}, but {KEY_PARTITIONER} places its key on "
            f"partition {expected}, where its prediction is: produce labels with "
            f"partitioner={LIBRDKAFKA_PARTITIONER} (librdkafka) or the Java/kafka-python default"
        )
        return dataclasses.replace(action, reason=WRONG_PARTITION, detail=detail)
