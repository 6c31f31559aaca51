"""The consumer of one topic behind one small Protocol, and its kafka-python implementation.

Both implementations (this one and :mod:`streamtrain.kafka.confluent_consumer`) give what
streamtrain needs and nothing more: static assignment (``assign()``, never group subscription:
kafka-python 3.0.12 can fail to join a group when work happens between polls, and joins are
slow on the embedded broker), a group id used only to store committed offsets, auto-commit off.
They are built by :mod:`streamtrain.kafka.factory`, which sets those options.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from streamtrain.kafka.errors import KafkaUnreachable, OffsetOutOfRange
from streamtrain.kafka.reachability import REACHABILITY, tcp_probe
from streamtrain.kafka.records import KafkaRecord


class RecordConsumer(Protocol):
    """A consumer of one topic's partitions, addressed by partition number."""

    def partitions_of_topic(self) -> tuple[int, ...]: ...
    def topic_exists(self) -> bool: ...
    def assign(self, partitions: Sequence[int]) -> None: ...
    def poll(self, timeout_ms: int, max_records: int) -> Sequence[KafkaRecord]: ...
    def seek(self, partition: int, offset: int) -> None: ...
    def seek_to_beginning(self, partitions: Sequence[int]) -> None: ...
    def seek_to_end(self, partitions: Sequence[int]) -> None: ...
    def position(self, partition: int) -> int: ...
    def log_start(self, partition: int) -> int: ...
    def committed(self, partition: int) -> int | None: ...
    def commit(self, offsets: Mapping[int, int]) -> None: ...
    def highwater(self, partition: int) -> int | None: ...
    def set_fetch_max_wait_ms(self, wait_ms: int) -> None: ...
    def close(self) -> None: ...


class TopicNotFound(RuntimeError):
    """The topic does not exist on the broker (or has no partitions)."""


def topic_not_found(topic: str) -> TopicNotFound:
    return TopicNotFound(
        f"topic {topic!r} does not exist; create it (e.g. `streamtrain produce --topic "
        f"{topic}` or your Kafka admin tool) or fix topics.samples / topics.snapshots"
    )


class KafkaPythonConsumer:
    """:class:`RecordConsumer` over ``kafka.KafkaConsumer``.

    ``options`` are complete ``KafkaConsumer`` keyword arguments (see
    :func:`streamtrain.kafka.factory.record_consumer`).

    >>> consumer = KafkaPythonConsumer(  # doctest: +SKIP
    ...     topic="samples", options={"bootstrap_servers": ["h:9092"], "group_id": "trainer"}
    ... )
    """

    def __init__(
        self, *, topic: str, options: Mapping[str, Any], metadata_timeout_s: float = 10.0
    ) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaTimeoutError

        self.topic = topic
        self._metadata_timeout_s = metadata_timeout_s
        try:
            self._consumer = KafkaConsumer(**dict(options))
        except KafkaTimeoutError:
            timeout_s = options.get("bootstrap_timeout_ms", 30_000) / 1000
            raise KafkaUnreachable(REACHABILITY.servers, "bootstrapping", timeout_s) from None

    def _tp(self, partition: int) -> Any:
        from kafka import TopicPartition

        return TopicPartition(self.topic, partition)

    def partitions_of_topic(self) -> tuple[int, ...]:
        deadline = time.monotonic() + self._metadata_timeout_s
        while True:
            found = self._consumer.partitions_for_topic(self.topic)
            if found:
                return tuple(sorted(found))
            if time.monotonic() >= deadline:
                if not tcp_probe(REACHABILITY.servers):
                    raise KafkaUnreachable(
                        REACHABILITY.servers, "reading topic metadata", self._metadata_timeout_s
                    )
                raise topic_not_found(self.topic)
            self._consumer._client.cluster.request_update()
            time.sleep(0.1)

    def topic_exists(self) -> bool:
        return bool(self._consumer.partitions_for_topic(self.topic))

    def assign(self, partitions: Sequence[int]) -> None:
        self._consumer.assign([self._tp(p) for p in partitions])

    def poll(self, timeout_ms: int, max_records: int) -> list[KafkaRecord]:
        from kafka.errors import OffsetOutOfRangeError

        REACHABILITY.check()
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except OffsetOutOfRangeError as exc:  # auto_offset_reset="none": the caller decides
            positions = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
            raise OffsetOutOfRange(
                self.topic, {tp.partition: int(o) for tp, o in positions.items()}
            ) from None
        if not polled:
            return []
        REACHABILITY.success()
        if len(polled) == 1:
            return list(next(iter(polled.values())))
        out: list[KafkaRecord] = []
        for tp in sorted(polled, key=lambda tp: tp.partition):
            out.extend(polled[tp])
        return out

    def seek(self, partition: int, offset: int) -> None:
        self._consumer.seek(self._tp(partition), offset)

    def seek_to_beginning(self, partitions: Sequence[int]) -> None:
        self._consumer.seek_to_beginning(*[self._tp(p) for p in partitions])

    def seek_to_end(self, partitions: Sequence[int]) -> None:
        self._consumer.seek_to_end(*[self._tp(p) for p in partitions])

    def position(self, partition: int) -> int:
        return int(self._consumer.position(self._tp(partition)))

    def log_start(self, partition: int) -> int:
        from kafka.errors import KafkaTimeoutError

        tp = self._tp(partition)
        # Bounded like the confluent consumer's watermark query: kafka-python's own default
        # (request_timeout_ms, 30 s) would hold a caller with its own deadline through an outage.
        timeout_ms = int(self._metadata_timeout_s * 1000)
        try:
            return int(self._consumer.beginning_offsets([tp], timeout_ms=timeout_ms)[tp])
        except KafkaTimeoutError:
            raise KafkaUnreachable(
                REACHABILITY.servers, "reading the log start", self._metadata_timeout_s
            ) from None

    def committed(self, partition: int) -> int | None:
        offset = self._consumer.committed(self._tp(partition))
        return None if offset is None or offset < 0 else int(offset)

    def commit(self, offsets: Mapping[int, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        if offsets:
            self._consumer.commit(
                {self._tp(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
            )

    def highwater(self, partition: int) -> int | None:
        value = self._consumer.highwater(self._tp(partition))
        return None if value is None else int(value)

    def set_fetch_max_wait_ms(self, wait_ms: int) -> None:
        """The longest a fetch waits for records, from the next fetch request on."""
        # kafka-python has no setter; its Fetcher reads this key of its own config copy for
        # every request it builds (kafka/consumer/fetcher.py), so both copies are updated.
        self._consumer.config["fetch_max_wait_ms"] = wait_ms
        self._consumer._fetcher.config["fetch_max_wait_ms"] = wait_ms

    def close(self) -> None:
        self._consumer.close(autocommit=False)
