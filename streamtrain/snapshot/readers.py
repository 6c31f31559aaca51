"""The snapshot subscriber's partition readers, each made on first use (so a subscriber built
while Kafka is down touches nothing until it is asked to read)."""

from __future__ import annotations

from collections.abc import Callable

from streamtrain.kafka import KafkaConnection, PartitionReader, ReadTimeout, partition_reader
from streamtrain.kafka.read_pace import ReadPace

# Chunks are up to ~512 KiB: several per round trip, but not a base in a few huge fetches.
# A new replica reads a whole base (4 GB) as fast as the broker answers, on the partition the
# running servers tail; each fetch is a response the broker builds and holds whole, and
# librdkafka's default read-ahead (64 MiB) kept fetching while the replica verified. Bounded,
# a reader holds at most ~12 MiB in its client (docs/snapshots.md, A new replica's read).
_CHUNK_FETCH_BYTES = 4 * 1024 * 1024
_CHUNK_QUEUE_BYTES = 2 * _CHUNK_FETCH_BYTES  # fetched ahead of the verifier, at most
# The scan reads a record or a few, then sits where it stopped: with librdkafka's default
# read-ahead (64 MiB) it went on fetching from there, the newest base's chunks when they follow
# (a one-partition topic, or a process's first base), 64 MiB a replica held and the broker
# served twice (+90 MiB over a 256 MiB base's load against +23 MiB without:
# test_snapshot_streamed_load.py). librdkafka reads ahead at least one fetch (1 MiB).
_SCAN_QUEUE_BYTES = 1024 * 1024
_SCAN_FETCH_BYTES = 64 * 1024  # a manifest, or one chunk's record: a window's worth
# What paces a base partition's reads (a new replica's base, a rotation's): None, unpaced.
# ReadPace (kafka/read_pace.py) yields to the broker's other clients when it answers late;
# measured at 4 GB it never paused a replica (its reads outran the broker nowhere) and it
# slowed a broker-bound read 1.8x without a faster tail, so it is not on by default
# (docs/snapshots.md, A new replica's read; bench/delta.py --base-read-pace on).
BASE_READ_PACE: Callable[[], ReadPace] | None = None


class SnapshotReaders:
    """Group-less readers of one snapshot topic: the *tail* (partition 0, followed by
    ``poll``), the *reader* (random access to partition 0: chunks the tail did not see, the
    topic's bounds), the *scan* reader (partition 0, small fetches) and one per base
    partition (a base lane base's chunks, ``writer.BASE_PARTITION``, which the tail never
    reads: docs/snapshots.md, Topic layout)."""

    def __init__(self, kafka: KafkaConnection, topic: str, fetch_max_wait_ms: int) -> None:
        self._kafka, self._topic, self._wait_ms = kafka, topic, fetch_max_wait_ms
        self._made: dict[tuple[str, int], PartitionReader] = {}

    def _get(self, role: str, partition: int = 0) -> PartitionReader:
        made = self._made.get((role, partition))
        if made is None:
            scan = role == "scan"
            made = partition_reader(
                self._kafka,
                topic=self._topic,
                partition=partition,
                fetch_max_wait_ms=self._wait_ms,
                fetch_bytes=_SCAN_FETCH_BYTES if scan else _CHUNK_FETCH_BYTES,
                queued_bytes=_SCAN_QUEUE_BYTES if scan else _CHUNK_QUEUE_BYTES,
                pace=BASE_READ_PACE if role == "reader" and partition != 0 else None,
            )
            self._made[(role, partition)] = made
        return made

    @property
    def tail(self) -> PartitionReader:
        return self._get("tail")

    @property
    def reader(self) -> PartitionReader:
        return self._get("reader")

    @property
    def scan(self) -> PartitionReader:
        """The scan reads one record per window: a chunk reader's (then) 16 MiB fetch-ahead made
        each window carry megabytes of chunks it skips (a 0.26 GB topic's scan took 39 s)."""
        return self._get("scan")

    def chunks(self, partition: int | None) -> PartitionReader:
        """The reader of a snapshot's chunks: on ``partition`` (a manifest's
        ``chunk_partition``), or beside its manifest on partition 0 (None). ``ReadTimeout``
        (the snapshot is ``incomplete``) when the topic has no such partition: only a foreign
        or broken writer names one, and the client would fail only after its timeout."""
        if partition is None:
            return self.reader
        if partition not in self.reader.partitions():
            raise ReadTimeout(
                f"topic {self._topic} has no partition {partition}, where the manifest says "
                "its chunks are"
            )
        return self._get("reader", partition)

    def close(self) -> None:
        made, self._made = list(self._made.values()), {}
        for reader in made:
            reader.close()
