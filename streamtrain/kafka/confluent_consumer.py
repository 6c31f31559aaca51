"""The :class:`RecordConsumer` over confluent-kafka (librdkafka): same semantics, ~10x the rate.

librdkafka fetches in its own threads and hands over C message objects; turning each into a
Python object per field is what costs at a million records a second, so a poll returns
:class:`~streamtrain.kafka.confluent_records.MessageRecords`, which gives decode its columns in
a few C-level passes, builds a :class:`KafkaRecord` only for the record someone indexes (a
rejected one, the last of a batch) and frees the messages once the poll is decoded.

Positions are ours, not librdkafka's:

1. ``assign``/``seek``/``seek_to_*`` only record the wanted absolute offset per partition
   (logical ends are resolved at once through a watermark query) and mark the assignment stale.
2. The next ``poll`` first re-assigns every partition at its recorded offset: librdkafka drops
   whatever it had prefetched, so nothing from before a seek is ever returned, and a seek
   before the first poll needs no fetch in flight.
3. Each poll moves a partition's position to its last returned offset + 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamtrain.kafka.client_logs import quiet_librdkafka
from streamtrain.kafka.confluent_records import MessageRecords
from streamtrain.kafka.consumer import topic_not_found
from streamtrain.kafka.errors import KafkaUnreachable, OffsetOutOfRange
from streamtrain.kafka.reachability import REACHABILITY
from streamtrain.kafka.records import KafkaRecord, last_per_partition

log = logging.getLogger(__name__)

# Topic-level errors that no retry fixes: the trainer must stop and say why.
_FATAL_CODES = ("TOPIC_AUTHORIZATION_FAILED",)
# The topic is gone for now (deleted, or a broker that came back empty): wait for it.
_MISSING_CODES = ("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION")
# With auto.offset.reset=error: the log no longer holds the position (see OffsetOutOfRange).
_OUT_OF_RANGE_CODES = ("_AUTO_OFFSET_RESET", "OFFSET_OUT_OF_RANGE")


class ConfluentConsumer:
    """:class:`~streamtrain.kafka.consumer.RecordConsumer` over ``confluent_kafka.Consumer``.

    ``config`` is complete librdkafka configuration, ``group.id`` included (see
    :func:`streamtrain.kafka.factory.record_consumer`, which sets what these semantics need:
    static assignment, the group only for committed offsets, no auto commit).

    >>> consumer = ConfluentConsumer(  # doctest: +SKIP
    ...     topic="samples", config={"bootstrap.servers": "h:9092", "group.id": "trainer"}
    ... )
    >>> consumer.assign(consumer.partitions_of_topic())  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        topic: str,
        config: Mapping[str, Any],
        metadata_timeout_s: float = 10.0,
        request_timeout_s: float = 30.0,
    ) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self._metadata_timeout_s = metadata_timeout_s
        self._request_timeout_s = request_timeout_s
        self._partitions: tuple[int, ...] = ()
        self._next: dict[int, int] = {}
        self._stale = False
        self._closed = False
        self._fatal: str | None = None
        self._topic_missing = False
        self._config = dict(config)
        self._consumer = Consumer(quiet_librdkafka(self._config, on_fatal=self._set_fatal))

    def _set_fatal(self, message: str) -> None:
        self._fatal = message

    def _metadata(self) -> Any:
        from confluent_kafka import KafkaException

        # Known to be down: ask briefly, so a caller with its own deadline is not held 10 s.
        timeout_s = self._metadata_timeout_s if REACHABILITY.reachable else 1.0
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as exc:
            REACHABILITY.failure(f"topic metadata: {exc.args[0].str() if exc.args else exc}")
            raise KafkaUnreachable(
                REACHABILITY.servers, "reading topic metadata", timeout_s
            ) from None
        REACHABILITY.success()
        return metadata.topics.get(self.topic)

    def _tp(self, partition: int, offset: int | None = None) -> Any:
        from confluent_kafka import TopicPartition

        if offset is None:
            return TopicPartition(self.topic, partition)
        return TopicPartition(self.topic, partition, offset)

    def partitions_of_topic(self) -> tuple[int, ...]:
        deadline = time.monotonic() + self._metadata_timeout_s
        while True:
            found = self._metadata()
            if found is not None and found.error is None and found.partitions:
                return tuple(sorted(found.partitions))
            if time.monotonic() >= deadline:
                raise topic_not_found(self.topic)
            time.sleep(0.1)

    def topic_exists(self) -> bool:
        found = self._metadata()
        return found is not None and found.error is None and bool(found.partitions)

    def assign(self, partitions: Sequence[int]) -> None:
        self._partitions = tuple(partitions)
        self._next = {p: self._next.get(p, -1) for p in self._partitions}
        self._stale = True

    def _move(self, partition: int, offset: int) -> None:
        if partition not in self._next:
            raise ValueError(f"partition {partition} of {self.topic!r} is not assigned")
        self._next[partition] = offset
        self._stale = True

    def _apply(self) -> None:
        unresolved = [p for p, o in self._next.items() if o < 0]
        if unresolved:  # assigned but never positioned: start from the committed offsets
            for p in unresolved:
                committed = self.committed(p)
                self._next[p] = committed if committed is not None else self.log_start(p)
        self._consumer.assign([self._tp(p, o) for p, o in self._next.items()])
        self._stale = False

    def poll(self, timeout_ms: int, max_records: int) -> Sequence[KafkaRecord]:
        """Up to ``max_records`` records, returned as soon as any are there (as kafka-python's
        poll does): librdkafka's ``consume`` alone would wait out ``timeout_ms`` to fill
        ``max_records``, batching records that arrived far apart."""
        if self._fatal is not None:
            raise RuntimeError(self._fatal)
        REACHABILITY.check()
        if self._stale:
            self._apply()
        messages = self._consumer.consume(num_messages=max_records, timeout=0)
        if not messages and timeout_ms > 0:
            messages = self._consumer.consume(num_messages=1, timeout=timeout_ms / 1000)
            if messages and max_records > 1:
                messages += self._consumer.consume(num_messages=max_records - 1, timeout=0)
        if not messages:
            return []
        from confluent_kafka import Message

        if any(map(Message.error, messages)):
            messages = self._drop_errors(messages)
        n = len(messages)
        if n:
            REACHABILITY.success()
            self._topic_missing = False
        partitions = np.fromiter(map(Message.partition, messages), np.int64, n)
        offsets = np.fromiter(map(Message.offset, messages), np.int64, n)
        for p, last in last_per_partition(partitions).items():
            self._next[p] = int(offsets[last]) + 1
        # A Sequence with columns, not a list: decode reads it through ColumnarRecords.
        return MessageRecords(self.topic, messages, partitions, offsets)

    def _drop_errors(self, messages: list[Any]) -> list[Any]:
        kept = []
        out_of_range: dict[int, int] = {}
        for message in messages:
            error = message.error()
            if error is None:
                kept.append(message)
            elif error.name() in _OUT_OF_RANGE_CODES:
                partition = message.partition()
                out_of_range[partition] = self._next.get(partition, -1)
            elif error.name() in _MISSING_CODES:
                if not self._topic_missing:  # once per disappearance, not once per poll
                    self._topic_missing = True
                    REACHABILITY.interrupted()  # it may come back as another log
                    log.warning(
                        "topic %s is missing on the broker (%s); waiting for it to come back",
                        self.topic,
                        error.str(),
                    )
            elif error.fatal() or error.name() in _FATAL_CODES:
                raise RuntimeError(
                    f"cannot consume {self.topic!r} partition {message.partition()}: "
                    f"{error.name()}: {error.str()} (does the topic still exist, and may "
                    "this client read it?)"
                )
            else:
                log.warning("consume error on %s: %s", self.topic, error.str())
        if out_of_range:
            raise OffsetOutOfRange(self.topic, out_of_range)
        return kept

    def seek(self, partition: int, offset: int) -> None:
        self._move(partition, offset)

    def seek_to_beginning(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            self._move(p, self.log_start(p))

    def seek_to_end(self, partitions: Sequence[int]) -> None:
        # The broker's answer; on some brokers (Tansu) it lags the true end, which a caller
        # corrects with :meth:`highwater` after a fetch.
        for p in partitions:
            self._move(p, self._watermarks(p)[1])

    def log_start(self, partition: int) -> int:
        return self._watermarks(partition)[0]

    def _watermarks(self, partition: int) -> tuple[int, int]:
        from confluent_kafka import KafkaError, KafkaException

        deadline = time.monotonic() + self._metadata_timeout_s
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(
                    self._tp(partition), timeout=self._request_timeout_s
                )
                return int(low), int(high)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code in (KafkaError._TIMED_OUT, KafkaError._TRANSPORT):
                    raise KafkaUnreachable(
                        REACHABILITY.servers, "reading watermarks", self._request_timeout_s
                    ) from None
                # A topic created moments ago: this client's metadata does not list it yet.
                if code != KafkaError._UNKNOWN_PARTITION or time.monotonic() >= deadline:
                    raise
                self._consumer.list_topics(self.topic, timeout=self._metadata_timeout_s)
                time.sleep(0.05)

    def position(self, partition: int) -> int:
        offset = self._next[partition]
        if offset < 0:
            self._apply()
            offset = self._next[partition]
        return offset

    def committed(self, partition: int) -> int | None:
        (tp,) = self._consumer.committed([self._tp(partition)], timeout=self._request_timeout_s)
        if tp.error is not None:
            raise RuntimeError(
                f"reading the committed offset of {self.topic}/{partition}: {tp.error}"
            )
        return None if tp.offset < 0 else int(tp.offset)

    def commit(self, offsets: Mapping[int, int]) -> None:
        if not offsets:
            return
        done = self._consumer.commit(
            offsets=[self._tp(p, o) for p, o in offsets.items()], asynchronous=False
        )
        failed = [f"{tp.partition}: {tp.error}" for tp in done or () if tp.error is not None]
        if failed:
            raise RuntimeError(f"commit to {self.topic!r} failed for partitions {failed}")

    def highwater(self, partition: int) -> int | None:
        # Cached from the last fetch response: right on Tansu, where a ListOffsets query is not.
        marks = self._consumer.get_watermark_offsets(self._tp(partition), cached=True)
        if marks is None or marks[1] < 0:
            return None
        return int(marks[1])

    def set_fetch_max_wait_ms(self, wait_ms: int) -> None:
        """The longest a fetch waits for records, from the next poll on. librdkafka reads its
        configuration once, so the client is replaced by one with the new wait; positions are
        ours (module docstring), and the next poll assigns every partition at its own."""
        from confluent_kafka import Consumer

        if self._closed:
            raise RuntimeError(f"the consumer of {self.topic!r} is closed")
        self._config["fetch.wait.max.ms"] = wait_ms
        replacement = Consumer(quiet_librdkafka(self._config, on_fatal=self._set_fatal))
        self._consumer.close()
        self._consumer = replacement
        self._stale = True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()
