"""One poll's confluent-kafka messages as records: columns for decode, messages freed after it.

librdkafka hands over one C ``Message`` object per record. Reading them as
:class:`~streamtrain.kafka.records.RecordColumns` takes a few C-level passes
(:meth:`MessageRecords.columns`); a :class:`ConfluentRecord` is built only for the record
someone indexes.

**Why the messages are freed once a poll is decoded** (:meth:`MessageRecords.settle`): a
``Message`` is tracked by the cyclic GC. Records a batch does not take yet stay buffered past
``next_batch`` (a full batch leaves the rest of its last poll; the log-order merge holds what
it cannot release yet), and the first collection after the GC pause (``gc_pause``) traverses
every one of them: measured on the bench topic, one generation-0 collection over ~110,000
held messages cost 0.07-0.39 µs per record of the whole run, log order's largest cost beyond
arrival order (bench/README.md "Ingest"). Settled, a poll keeps only untracked columns (int
arrays, lists of ``bytes``); the messages of rejected records are read whole first, since a
dead letter copies their headers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from streamtrain.gc_pause import gc_paused
from streamtrain.kafka.records import KafkaRecord, RecordColumns
from streamtrain.wire import content_types_of


@dataclass(frozen=True)
class ConfluentRecord:
    """One consumed record as a :class:`KafkaRecord`."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]

    @classmethod
    def of(cls, message: Any) -> ConfluentRecord:
        return cls(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp=_stamp(message.timestamp()),
            key=message.key(),
            value=message.value(),
            headers=[(k, v if v is not None else b"") for k, v in message.headers() or ()],
        )


@dataclass(frozen=True)
class SettledRecord:
    """A record of a settled poll that was not rejected: every field but its headers, which
    were freed with its message (no reader of an accepted record needs them; a record mark
    reads offset, timestamp, key and value)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        raise LookupError(
            f"the headers of {self.topic}/{self.partition}/{self.offset} were freed after "
            "decoding: only a rejected record keeps them (MessageRecords.settle)"
        )


_VALUE = itemgetter(1)  # of a (timestamp type, value) pair


def _stamp(timestamp: tuple[int, int]) -> int:
    kind, value = timestamp
    return -1 if kind == 0 else value  # TIMESTAMP_NOT_AVAILABLE


class MessageRecords(Sequence[KafkaRecord]):
    """One poll's confluent messages of ``topic``: a sequence of :class:`KafkaRecord` with
    cheap columns, whose messages :meth:`settle` frees."""

    def __init__(
        self,
        topic: str,
        messages: list[Any],
        partitions: npt.NDArray[np.int64],
        offsets: npt.NDArray[np.int64],
    ) -> None:
        self._topic = topic
        self._messages: list[Any] | None = messages
        self._partitions = partitions
        self._offsets = offsets
        self._columns: RecordColumns | None = None
        self._keys: list[bytes | None] = []
        self._whole: dict[int, ConfluentRecord] = {}  # after settle: the records kept whole

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, index: int) -> KafkaRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[KafkaRecord]: ...
    def __getitem__(self, index: int | slice) -> KafkaRecord | Sequence[KafkaRecord]:
        if isinstance(index, slice):
            return [self._record(i) for i in range(len(self))[index]]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"record {index} of a poll of {n}")
        return self._record(index % n)

    def __iter__(self) -> Iterator[KafkaRecord]:
        return (self._record(i) for i in range(len(self)))

    def _record(self, i: int) -> KafkaRecord:
        if self._messages is not None:
            return ConfluentRecord.of(self._messages[i])
        whole = self._whole.get(i)
        if whole is not None:
            return whole
        columns = self._columns
        assert columns is not None  # settle() builds them first
        return SettledRecord(
            topic=self._topic,
            partition=int(self._partitions[i]),
            offset=int(self._offsets[i]),
            timestamp=int(columns.timestamps_ms[i]),
            key=self._keys[i],
            value=columns.values[i],
        )

    def columns(self, content_types: bool = True) -> RecordColumns:
        """The poll's columns; ``content_types=False`` never calls ``Message.headers()``,
        which builds a list of tuples per record (the largest per-record cost here).

        ``Message.timestamp()`` builds a (type, value) tuple per call; only the value is read
        (``itemgetter`` in C: half the items of reading both). Only a value <= 0 can be a
        timestamp that is not available (librdkafka gives -1, or 0 in a message-format-v0
        record): those few are decided by their type, as :class:`ConfluentRecord` does."""
        known = self._columns
        if known is not None and (known.content_types is not None or not content_types):
            return known
        from confluent_kafka import Message

        messages = self._messages
        if messages is None:
            raise RuntimeError("the content types of a settled poll were not read before")
        n, types = len(messages), None
        with gc_paused():  # a header list and tuples per record, no cycles among them
            stamps = np.fromiter(map(_VALUE, map(Message.timestamp, messages)), np.int64, n)
            for i in np.flatnonzero(stamps <= 0).tolist():
                stamps[i] = _stamp(messages[i].timestamp())
            values = list(map(Message.value, messages))
            if content_types:
                # librdkafka headers: a list of (str, bytes | None); a null value is no type.
                headers: list[Any] = list(map(Message.headers, messages))
                types = content_types_of(headers)
                del headers  # freed while the GC is still off
        self._columns = RecordColumns(
            partitions=self._partitions,
            offsets=self._offsets,
            timestamps_ms=stamps,
            values=values,
            content_types=types,
        )
        return self._columns

    def settle(self, keep: Collection[int]) -> None:
        """Free the messages (see the module doc): the records at ``keep`` (a poll's rejected
        ones) stay whole, the others keep every field but their headers. One more C-level pass
        reads the keys, which a record mark digests."""
        messages = self._messages
        if messages is None:
            return
        from confluent_kafka import Message

        self.columns(content_types=False)
        self._keys = list(map(Message.key, messages))
        self._whole = {i: ConfluentRecord.of(messages[i]) for i in keep}
        self._messages = None
