"""The records the Kafka wing yields, whichever client library read them: the fields every
reader uses (:class:`KafkaRecord`) and one poll's records as columns (:class:`RecordColumns`),
which the librdkafka consumer builds without a Python object per record.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streamtrain.wire import content_types_of


class KafkaRecord(Protocol):
    """The fields of a consumed record that ingest reads (kafka-python's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...  # epoch milliseconds, -1 when the broker has none
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass
class RecordColumns:
    """The fields decode needs of one poll's records, one column each, in record order."""

    partitions: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]
    timestamps_ms: npt.NDArray[np.int64]  # -1 where the broker has none
    values: Sequence[bytes | None]
    # The content-type header per record (None when absent); the column itself is None when
    # the caller did not ask for it (a topic whose codec is declared: ingest.codec).
    content_types: Sequence[bytes | None] | None


@runtime_checkable
class ColumnarRecords(Protocol):
    """Records that can hand over :class:`RecordColumns` cheaper than field-by-field access
    (a client whose records are not plain attribute objects). Indexing still gives a
    :class:`KafkaRecord` (used for the few rejected records)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> KafkaRecord: ...
    def columns(self, content_types: bool = True) -> RecordColumns: ...


@runtime_checkable
class SettlingRecords(Protocol):
    """Records holding client objects that a reader frees once it has decoded them, keeping
    the records at ``keep`` (its rejects) whole (``confluent_records.MessageRecords``: why)."""

    def settle(self, keep: Collection[int]) -> None: ...


def record_columns(records: Sequence[KafkaRecord], content_types: bool = True) -> RecordColumns:
    """Columns of ``records``: their own when they offer them, else read field by field.
    ``content_types=False`` leaves the headers unread (their column is None)."""
    if isinstance(records, ColumnarRecords):
        return records.columns(content_types)
    n = len(records)
    return RecordColumns(
        partitions=np.fromiter((r.partition for r in records), np.int64, n),
        offsets=np.fromiter((r.offset for r in records), np.int64, n),
        timestamps_ms=np.fromiter((r.timestamp for r in records), np.int64, n),
        values=[r.value for r in records],
        content_types=content_types_of([r.headers for r in records]) if content_types else None,
    )


def partitions_in(partitions: npt.NDArray[np.int64]) -> list[int]:
    """The distinct partition numbers of a partition column, ascending.

    ``np.unique`` hashes or sorts every entry (numpy 2's hash path: ~5 ms for a 100,000-record
    poll, the largest single cost of the log-order merge); partition numbers are small
    non-negative integers, so one ``bincount`` pass does it.
    """
    if not len(partitions):
        return []
    return np.flatnonzero(np.bincount(partitions)).tolist()


def last_per_partition(partitions: npt.NDArray[np.int64]) -> dict[int, int]:
    """Partition -> index of its last entry in a partition column (a poll's, a batch's)."""
    n = len(partitions)
    if not n:
        return {}
    first = int(partitions[0])
    if partitions[-1] == first and bool((partitions == first).all()):
        return {first: n - 1}
    backwards = partitions[::-1]
    return {p: n - 1 - int(np.argmax(backwards == p)) for p in partitions_in(partitions)}
