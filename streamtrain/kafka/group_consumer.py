"""Two co-partitioned topics read through one consumer group, partition numbers kept paired.

The join (``streamtrain join``) scales by partition: every replica subscribes to the
prediction log and the labels topic in one group, and the **range** assignor gives each member
the same partition numbers of both topics (they have the same partition count), so the
labels of a request id reach the replica that holds its prediction.

This is the one place streamtrain uses group subscription, and it uses confluent-kafka
whatever ``kafka.client`` says: kafka-python 3.0.12 can fail to join a group when work
happens between polls (KAFKA_NOTES). The embedded broker holds a JoinGroup for about half
the session timeout, so the session timeout is a setting (``join.session_timeout_ms``).
Positions are the caller's: ``on_assign`` returns the offset to start each partition pair
from (its checkpoint), and nothing is read from committed offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from streamtrain.kafka.client_logs import LIBRDKAFKA_CONNECT, quiet_librdkafka
from streamtrain.kafka.confluent_records import ConfluentRecord
from streamtrain.kafka.reachability import REACHABILITY

log = logging.getLogger(__name__)

OnAssign = Callable[[tuple[int, ...]], Mapping[int, tuple[int, int]]]
"""Partition numbers gained -> {partition: (offset of the first topic, of the second)}."""
OnRevoke = Callable[[tuple[int, ...]], None]


class CoPartitionError(RuntimeError):
    """The group assigned different partition numbers of the two topics."""


class CoPartitionedGroup:
    """A group member reading partition pairs ``p`` of ``topics[0]`` and ``topics[1]``.

    ``config`` is complete librdkafka configuration (built by
    :func:`streamtrain.kafka.factory.co_partitioned_group`).

    >>> group = co_partitioned_group(  # doctest: +SKIP
    ...     kafka, topics=("predictions", "labels"), group_id="join",
    ...     on_assign=lambda ps: {p: (0, 0) for p in ps}, on_revoke=lambda ps: None)
    >>> records = group.poll(0.1)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        config: Mapping[str, Any],
        topics: tuple[str, str],
        on_assign: OnAssign,
        on_revoke: OnRevoke,
    ) -> None:
        from confluent_kafka import Consumer

        self.topics = topics
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self.assigned: tuple[int, ...] = ()
        self._consumer = Consumer(quiet_librdkafka(config))
        self._consumer.subscribe(
            list(topics), on_assign=self._assigned_cb, on_revoke=self._revoked_cb
        )

    def _assigned_cb(self, consumer: Any, gained: list[Any]) -> None:
        from confluent_kafka import TopicPartition

        by_topic = {t: sorted(tp.partition for tp in gained if tp.topic == t) for t in self.topics}
        first, second = (by_topic[t] for t in self.topics)
        if first != second:
            raise CoPartitionError(
                f"the group assigned partitions {first} of {self.topics[0]!r} but {second} of "
                f"{self.topics[1]!r}; give both topics the same partition count"
            )
        starts = self._on_assign(tuple(first))
        consumer.assign(
            [
                TopicPartition(topic, p, starts[p][i])
                for p in first
                for i, topic in enumerate(self.topics)
            ]
        )
        self.assigned = tuple(first)

    def _revoked_cb(self, consumer: Any, lost: list[Any]) -> None:
        partitions = tuple(sorted({tp.partition for tp in lost}))
        self.assigned = ()
        if partitions:
            self._on_revoke(partitions)
        consumer.unassign()

    def poll(self, timeout_s: float, max_records: int = 1000) -> list[ConfluentRecord]:
        """The next records of the assigned partitions; runs the rebalance callbacks."""
        # librdkafka's consume waits out the timeout to fill max_records: take what is there,
        # and wait only when nothing is (as ConfluentConsumer.poll does).
        messages = self._consumer.consume(num_messages=max_records, timeout=0)
        if not messages and timeout_s > 0:
            messages = self._consumer.consume(num_messages=1, timeout=timeout_s)
            if messages and max_records > 1:
                messages += self._consumer.consume(num_messages=max_records - 1, timeout=0)
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(ConfluentRecord.of(message))
            elif error.fatal():
                raise RuntimeError(f"consumer group failed: {error.name()}: {error.str()}")
            elif error.name() in LIBRDKAFKA_CONNECT:  # one line per outage, not per attempt
                REACHABILITY.failure(error.str())
            else:
                log.warning("consume error: %s", error.str())
        if records:
            REACHABILITY.success()
        return records

    def partition_count(self, topic: str, timeout_s: float = 10.0) -> int:
        """How many partitions ``topic`` has, from the cluster's metadata."""
        found = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise RuntimeError(f"topic {topic!r} has no partitions in the cluster's metadata")
        return len(found.partitions)

    def highwater(self, topic: str, partition: int) -> int | None:
        """The high watermark of the last fetch from ``topic``/``partition`` (right on Tansu)."""
        from confluent_kafka import TopicPartition

        marks = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        if marks is None or marks[1] < 0:
            return None
        return int(marks[1])

    def seek(self, partition: int, first: int, second: int) -> None:
        """Read partition pair ``partition`` from these offsets (of topics[0], topics[1])."""
        from confluent_kafka import TopicPartition

        for topic, offset in zip(self.topics, (first, second), strict=True):
            self._consumer.seek(TopicPartition(topic, partition, offset))

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Store positions in the group, for lag monitoring only (checkpoints are the truth)."""
        from confluent_kafka import TopicPartition

        if offsets:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=True,
            )

    def close(self) -> None:
        """Leave the group; the revoke callback runs first, so state is checkpointed."""
        self._consumer.close()
