"""The Kafka consumer behind one small Protocol, so another client library can be added.

:class:`KafkaPythonConsumer` wraps kafka-python with what streamtrain needs and nothing more:
static assignment (``assign()``, never group subscription: kafka-python 3.0.12 can fail to
join a group when work happens between polls, and joins are slow on the embedded broker), a
group id used only to store committed offsets, auto-commit off.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from streamtrain.ingest.decode import KafkaRecord


class RecordConsumer(Protocol):
    """A consumer of one topic's partitions, addressed by partition number."""

    def partitions_of_topic(self) -> tuple[int, ...]: ...
    def assign(self, partitions: Sequence[int]) -> None: ...
    def poll(self, timeout_ms: int, max_records: int) -> Sequence[KafkaRecord]: ...
    def seek(self, partition: int, offset: int) -> None: ...
    def seek_to_beginning(self, partitions: Sequence[int]) -> None: ...
    def seek_to_end(self, partitions: Sequence[int]) -> None: ...
    def position(self, partition: int) -> int: ...
    def committed(self, partition: int) -> int | None: ...
    def commit(self, offsets: Mapping[int, int]) -> None: ...
    def highwater(self, partition: int) -> int | None: ...
    def close(self) -> None: ...


class TopicNotFound(RuntimeError):
    """The topic does not exist on the broker (or has no partitions)."""


class KafkaPythonConsumer:
    """:class:`RecordConsumer` over ``kafka.KafkaConsumer``.

    >>> consumer = KafkaPythonConsumer(  # doctest: +SKIP
    ...     topic="samples", group_id="trainer", client_options={"bootstrap_servers": "h:9092"}
    ... )
    """

    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        client_options: Mapping[str, Any],
        fetch_max_wait_ms: int = 10,
        max_partition_fetch_bytes: int = 1_048_576,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        from kafka import KafkaConsumer

        self.topic = topic
        self._metadata_timeout_s = metadata_timeout_s
        self._consumer = KafkaConsumer(
            **dict(client_options),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
        )

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
                raise TopicNotFound(
                    f"topic {self.topic!r} does not exist; create it (e.g. `streamtrain produce "
                    f"--topic {self.topic}` or your Kafka admin tool) or fix topics.samples"
                )
            self._consumer._client.cluster.request_update()
            time.sleep(0.1)

    def assign(self, partitions: Sequence[int]) -> None:
        self._consumer.assign([self._tp(p) for p in partitions])

    def poll(self, timeout_ms: int, max_records: int) -> list[KafkaRecord]:
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if not polled:
            return []
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

    def close(self) -> None:
        self._consumer.close(autocommit=False)
