"""Write one snapshot to the topic: chunk records first, the manifest record last."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from streamtrain.kafka import (
    KafkaConnection,
    RecordProducer,
    TopicNotFound,
    record_consumer,
    record_producer,
)
from streamtrain.snapshot import wire
from streamtrain.snapshot.delta import delta_payload
from streamtrain.snapshot.manifest import (
    ShardInfo,
    SnapshotManifest,
    TensorInfo,
    shard_snapshot_id,
)
from streamtrain.snapshot.payload import encode_parts, sha256_hex
from streamtrain.snapshot.signing import ManifestSigner
from streamtrain.train.hooks import SnapshotRequest

log = logging.getLogger(__name__)

# Room for the record batch framing, key and headers on top of one chunk's bytes.
RECORD_OVERHEAD_BYTES = 64 * 1024
PARTITION = 0  # manifests, deltas and whole snapshots of the delta lane
BASE_PARTITION = wire.BASE_PARTITION  # a base lane base's chunks (manifest: chunk_partition)


class SnapshotWriteError(RuntimeError):
    """A snapshot could not be written; no manifest was produced for it."""


@dataclass(frozen=True)
class ShardSpec:
    """This writer publishes shard ``index`` of ``world`` of each step; ``tables`` are the
    row-wise state names with their global rows (``ShardInfo``, ``shard_assembly.py``)."""

    index: int
    world: int
    tables: Mapping[str, int]

    def info(self, run_id: str, version: int) -> ShardInfo:
        ids = [shard_snapshot_id(run_id, version, i, self.world) for i in range(self.world)]
        return ShardInfo(
            index=self.index, world=self.world, tables=dict(self.tables), shard_ids=ids
        )


class SnapshotWriter:
    """Owns a producer and writes :class:`SnapshotRequest` s; used from one thread at a time.

    The producer is created on first use, so constructing a writer never touches the network
    and a broker that is down at start costs one failed snapshot, not a crashed trainer.
    """

    def __init__(
        self,
        *,
        kafka: KafkaConnection,
        topic: str,
        model_name: str,
        settings_hash: str,
        chunk_bytes: int,
        send_timeout_s: float = 60.0,
        signer: ManifestSigner | None = None,
        lane: str = "",
        shard: ShardSpec | None = None,
        window_bytes: int | None = None,
        chunk_partition: int = PARTITION,
        partition_zero: threading.Lock | None = None,
    ) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}; 524288 is typical")
        self.topic = topic
        self.model_name = model_name
        self.settings_hash = settings_hash
        self.chunk_bytes = chunk_bytes
        self.send_timeout_s = send_timeout_s
        self.signer = signer
        self.lane = lane  # wire.LANE of its chunks: "base" for the base lane (publisher.py)
        self.shard = shard
        # Step 3 in windows of this many bytes, each acknowledged before the next (None: all
        # at once): the base lane's writer, so a base does not fill the broker's queue ahead
        # of the deltas, and ``send_timeout_s`` bounds one window, not a whole 1 GB base.
        self.window_bytes = window_bytes
        self.manifest_offset: int | None = None  # of the last manifest written
        # Where the chunks go: ``chunk_partition`` if the topic has it (checked with each new
        # producer), else PARTITION beside the manifest, as before the base partition.
        self.chunk_partition = chunk_partition
        self._chunks_to: int | None = None  # decided once per producer (None: not yet)
        self._warned = False
        self._kafka = kafka
        self._producer: RecordProducer | None = None
        # Shared by one publisher's writers (its two lanes): a snapshot's records on
        # partition 0, from its first chunk to its manifest, are written under it, so no
        # other lane's manifest lands between them. A reader's backward scan jumps from a
        # manifest to the record before its first chunk without reading what it passes
        # (scan.py): a base manifest written inside a delta's span was passed over, and a new
        # replica loaded the base before it (docs/snapshots.md, The scan's jumps).
        self._partition_zero = partition_zero

    def _holding(self, on: bool) -> contextlib.AbstractContextManager[object]:
        """The shared partition-0 lock when ``on`` and this writer has one."""
        if on and self._partition_zero is not None:
            return self._partition_zero
        return contextlib.nullcontext()

    def open(self) -> None:
        """Create the producer now, on the calling thread, instead of at the first write; a
        failure is logged and left to the first write. Both lanes call it when their threads
        start (``lanes.py``, ``publisher.py``). The base lane's first write is the first base
        rotation, minutes into training, and the client's creation there (and, the first time
        in a process, the import of the consumer module that finds the base partition: 8 ms
        of imports holding the GIL, ``bench/README.md``) blocked the training thread at the
        rotation (issue 26); the delta lane's made its client at the first snapshot (0.3-1 ms
        of the GIL). No network I/O with confluent-kafka: librdkafka connects in the
        background."""
        try:
            self._new_producer()
            if self.chunk_partition != PARTITION and self._kafka.client == "confluent":
                # the probe's consumer (``_partition_for_chunks``, at the first write: the
                # topic may not exist yet), imported now
                import streamtrain.kafka.confluent_consumer  # noqa: F401
        except Exception as exc:
            log.info("snapshot writer for topic %s not opened ahead (%s)", self.topic, exc)

    def _new_producer(self) -> RecordProducer:
        if self._producer is None:
            self._producer = record_producer(
                self._kafka,
                acks="all",
                linger_ms=0,
                max_request_size=self.chunk_bytes + RECORD_OVERHEAD_BYTES,
            )
            self._chunks_to = None  # asked again for each new producer
        return self._producer

    def _get_producer(self) -> tuple[RecordProducer, int]:
        """The producer and the partition whole snapshots' chunks go to."""
        producer = self._new_producer()
        if self._chunks_to is None:
            self._chunks_to = self._partition_for_chunks()
        return producer, self._chunks_to

    def _partition_for_chunks(self) -> int:
        """``chunk_partition`` when the topic has it; otherwise PARTITION, with one warning
        per writer (a user-created one-partition topic keeps working as before)."""
        if self.chunk_partition == PARTITION:
            return PARTITION
        consumer = record_consumer(self._kafka, topic=self.topic)
        try:
            partitions = consumer.partitions_of_topic()
        except TopicNotFound:
            partitions = ()  # created by the first write, with the broker's default count
        finally:
            consumer.close()
        if self.chunk_partition in partitions:
            return self.chunk_partition
        if not self._warned:
            self._warned = True
            log.warning(
                "snapshot topic %s has no partition %d: bases are written beside the deltas "
                "on partition %d, so a server following the deltas reads each base's bytes "
                "first; create the topic with 2 partitions (docs/snapshots.md, Topic layout)",
                self.topic,
                self.chunk_partition,
                PARTITION,
            )
        return PARTITION

    def write(
        self,
        request: SnapshotRequest,
        *,
        base_id: str | None = None,
        predecessor_id: str | None = None,
        base_offset: int | None = None,
    ) -> SnapshotManifest:
        """Publish ``request``; returns the manifest written (its offset in
        :attr:`manifest_offset`).

        A request with ``rows`` is a delta on ``predecessor_id`` in the lineage of ``base_id``,
        whose manifest is at ``base_offset`` on the topic when known (a new replica's scan
        jumps there, ``scan.py``).

        1. Wait until the trainer's copy of the weights is complete (``wait_ready``).
        2. Serialize as safetensors (views of the tensors' memory, not a copy:
           ``payload.encode_parts``; a ``request.streamed`` tensor's bytes are read piece by
           piece as they are sent), cut into chunks of ``chunk_bytes``.
        3. Produce every chunk to partition 0 (a whole base of a writer with
           ``chunk_partition``: to that partition, named in the manifest) and wait for all
           acknowledgements; the first chunk's offset becomes ``first_chunk_offset``. The
           payload's sha256 is computed over the chunks as they are sent (one pass over the
           bytes; the manifest is written after them anyway).
        4. Only then produce the manifest, signed (when a signer is set) over its exact bytes,
           and wait for it: a manifest on the topic implies its chunks are already there. A
           failure before this step leaves no manifest, so readers never see a snapshot that
           points at chunks that were never written.
        """
        request.wait_ready()
        tensors = request.tensors
        if request.rows is not None:
            if base_id is None or predecessor_id is None:
                raise SnapshotWriteError(
                    f"delta {request.run_id}/{request.version} has no base or predecessor"
                )
            tensors = delta_payload(tensors, request.rows)
        # views of the tensors' memory, not a copy of them (payload.encode_parts): the
        # request's tensors are not changed until this returns, and a streamed tensor's
        # source keeps its pieces exact while it changes (snapshot/shadow.py)
        payload, infos = encode_parts(tensors, request.streamed)
        chunk_count = payload.chunk_count(self.chunk_bytes)
        manifest = self._manifest(
            request, infos, payload.size, chunk_count, base_id, predecessor_id, base_offset
        )
        sid = manifest.snapshot_id  # a shard's records carry its own id
        # Checked before any chunk is written, so an oversized manifest wastes no topic space.
        if len(manifest.model_dump_json()) + 1024 > self.chunk_bytes + RECORD_OVERHEAD_BYTES:
            raise SnapshotWriteError(
                f"manifest of snapshot {sid} has {len(infos)} tensors and does not fit in one "
                f"record of {self.chunk_bytes + RECORD_OVERHEAD_BYTES} bytes: raise chunk_bytes"
            )
        producer, whole_to = self._get_producer()
        to = whole_to if request.rows is None and self.shard is None else PARTITION
        digest = hashlib.sha256()
        chunks = payload.iter_chunks(self.chunk_bytes, digest)
        # The delta lane holds the lock over its whole span (a delta: one chunk and a
        # manifest, milliseconds); the base lane only over its manifest, since its chunks
        # take seconds and deltas must not wait for them (they are on partition 1, or, on a
        # one-partition topic, interleave with deltas as documented).
        whole_span = self.lane != wire.BASE_LANE
        with self._holding(whole_span):
            first_offset = self._send_chunks(producer, sid, chunks, chunk_count, to)
            manifest = manifest.model_copy(
                update={
                    "sha256": digest.hexdigest(),
                    "first_chunk_offset": first_offset,
                    "chunk_partition": None if to == PARTITION else to,
                }
            )
            with self._holding(not whole_span):
                self.manifest_offset = self._send_manifest(producer, manifest)
        log.debug("snapshot %s written: %d bytes in %d chunks", sid, payload.size, chunk_count)
        return manifest

    def _manifest(
        self,
        request: SnapshotRequest,
        infos: list[TensorInfo],
        size: int,
        chunk_count: int,
        base_id: str | None,
        predecessor_id: str | None,
        base_offset: int | None,
    ) -> SnapshotManifest:
        """Step 2's manifest, before the chunks: their offset and digest are filled in after."""
        return SnapshotManifest(
            model_name=self.model_name,
            settings_hash=self.settings_hash,
            run_id=request.run_id,
            version=request.version,
            created_at=request.created_at,
            data_watermark=request.data_watermark,
            offsets=dict(request.offsets),
            tensors=infos,
            size_bytes=size,
            sha256="0" * 64,  # the chunks' digest once they are sent (step 3)
            chunk_count=chunk_count,
            chunk_bytes=self.chunk_bytes,
            first_chunk_offset=None,
            kind="base" if request.rows is None else "delta",
            base_id=None if request.rows is None else base_id,
            predecessor_id=None if request.rows is None else predecessor_id,
            shard=None if self.shard is None else self.shard.info(request.run_id, request.version),
            base_offset=None if request.rows is None else base_offset,
            chunk_partition=None,
        )

    def _send_manifest(self, producer: RecordProducer, manifest: SnapshotManifest) -> int:
        """Step 4: the manifest, signed over its exact bytes, acknowledged; its offset."""
        sid = manifest.snapshot_id
        value = manifest.model_dump_json().encode()
        signature = self.signer.sign(value) if self.signer is not None else None
        sent = producer.send(
            self.topic,
            value,
            key=wire.manifest_key(self.model_name, sid),
            headers=wire.manifest_headers(self.model_name, sid, signature, self.lane),
            partition=PARTITION,
        )
        producer.flush(timeout=self.send_timeout_s)
        return sent.result(timeout=self.send_timeout_s)

    def _send_chunks(
        self,
        producer: RecordProducer,
        sid: str,
        chunks: Iterator[memoryview | bytes],
        count: int,
        partition: int,
    ) -> int:
        """Step 3: every chunk produced and acknowledged (window by window when
        ``window_bytes`` is set); the first chunk's offset. Each chunk is copied into its
        record before the next is asked for (a streamed chunk is valid only until then)."""
        per_window = count
        if self.window_bytes is not None:
            per_window = max(1, self.window_bytes // self.chunk_bytes)
        first: int | None = None
        for start in range(0, count, per_window):
            futures = [
                producer.send(
                    self.topic,
                    bytes(chunk),
                    key=wire.chunk_key(self.model_name, sid, i),
                    headers=wire.chunk_headers(
                        self.model_name, sid, i, count, sha256_hex(chunk), self.lane
                    ),
                    partition=partition,
                )
                for i, chunk in enumerate(itertools.islice(chunks, per_window), start)
            ]
            producer.flush(timeout=self.send_timeout_s)
            offsets = [future.result(timeout=self.send_timeout_s) for future in futures]
            first = offsets[0] if first is None else first
        assert first is not None  # a payload is never empty: chunks() gives >= 1 chunk
        return first

    def close(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=timeout)
