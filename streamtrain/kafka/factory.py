"""Every Kafka client of streamtrain is built here, for the connection's client library.

Each builder sets the options its role's semantics need (static assignment with no group
join, no auto commit, fetch sizes, acks) in both libraries' names, so the roles behave the
same whichever library runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from streamtrain.kafka.client_logs import quiet_librdkafka, route_kafka_python_logs
from streamtrain.kafka.connection import KafkaConnection
from streamtrain.kafka.consumer import RecordConsumer
from streamtrain.kafka.partition_reader import PartitionReader
from streamtrain.kafka.partitioner import LIBRDKAFKA_PARTITIONER
from streamtrain.kafka.producer import RecordProducer
from streamtrain.kafka.reachability import REACHABILITY
from streamtrain.kafka.read_pace import ReadPace

if TYPE_CHECKING:  # built lazily: only the join needs it, and it loads confluent-kafka
    from streamtrain.kafka.group_consumer import CoPartitionedGroup, OnAssign, OnRevoke

_MIN_FETCH_MAX_BYTES = 1_048_576

Acks = Literal[0, 1, "all"]
OutOfRange = Literal["earliest", "raise"]


def _prepare(kafka: KafkaConnection) -> None:
    """Every client reports to this process's reachability tracker, quietly."""
    REACHABILITY.configure(kafka.bootstrap_servers)
    if kafka.client == "kafka-python":
        route_kafka_python_logs()


def record_consumer(
    kafka: KafkaConnection,
    *,
    topic: str,
    group_id: str | None = None,
    fetch_max_wait_ms: int = 10,
    max_partition_fetch_bytes: int = 1_048_576,
    fetch_max_bytes: int = 52_428_800,
    metadata_timeout_s: float | None = None,
    out_of_range: OutOfRange = "earliest",
    max_queued_bytes: int | None = None,
) -> RecordConsumer:
    """A consumer of ``topic`` for ``assign()`` use; ``group_id`` only stores committed
    offsets (None: a reader that never commits). ``out_of_range="raise"``: a position the
    log no longer holds raises :class:`~streamtrain.kafka.errors.OffsetOutOfRange` from
    ``poll`` instead of the library silently moving to the log's start.
    ``max_queued_bytes``: what librdkafka may fetch ahead of ``poll`` (its
    ``queued.max.messages.kbytes``, 64 MiB unless set); kafka-python holds one fetch
    response per partition, bounded by the fetch sizes already."""
    _prepare(kafka)
    if metadata_timeout_s is None:  # waiting for a topic to appear: at most 10 s
        metadata_timeout_s = min(10.0, kafka.connect_timeout_s)
    if kafka.client == "kafka-python":
        from streamtrain.kafka.consumer import KafkaPythonConsumer

        options = kafka.kafka_python(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if out_of_range == "earliest" else "none",
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_bytes=fetch_max_bytes,
        )
        return KafkaPythonConsumer(
            topic=topic, options=options, metadata_timeout_s=metadata_timeout_s
        )
    from streamtrain.kafka.confluent_consumer import ConfluentConsumer

    semantics: dict[str, object] = {
        # KAFKA_NOTES: 10 ms instead of 1000 is what keeps a drained queue refilled.
        "fetch.queue.backoff.ms": 10,
        # librdkafka needs a group id even for assign(); a reader never commits with it.
        "group.id": group_id or f"{kafka.options.get('client_id', 'streamtrain')}-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest" if out_of_range == "earliest" else "error",
        "fetch.wait.max.ms": fetch_max_wait_ms,
        "max.partition.fetch.bytes": max_partition_fetch_bytes,
        "fetch.max.bytes": fetch_max_bytes,
        "receive.message.max.bytes": fetch_max_bytes + 1_048_576,
    }
    if max_queued_bytes is not None:
        semantics["queued.max.messages.kbytes"] = max(1, max_queued_bytes // 1024)
    config = kafka.librdkafka(semantics)
    return ConfluentConsumer(topic=topic, config=config, metadata_timeout_s=metadata_timeout_s)


def partition_reader(
    kafka: KafkaConnection,
    *,
    topic: str,
    partition: int = 0,
    fetch_max_wait_ms: int = 10,
    fetch_bytes: int = 16 * 1024 * 1024,
    queued_bytes: int | None = None,
    pace: Callable[[], ReadPace] | None = None,
) -> PartitionReader:
    """A group-less reader of one partition holding large records (snapshot chunks);
    ``fetch_bytes`` per round trip (a record larger still comes whole); ``queued_bytes``: at
    most this much fetched ahead of the reader (None: the library's default, 64 MiB with
    librdkafka); ``pace``: each range read paced by a new one of these (kafka/read_pace.py)."""

    def consumer() -> RecordConsumer:
        return record_consumer(
            kafka,
            topic=topic,
            fetch_max_wait_ms=fetch_max_wait_ms,
            # Chunks are up to ~512 KiB; the default fetches several per round trip.
            max_partition_fetch_bytes=fetch_bytes,
            # One partition, so the request's bound is the partition's: the embedded broker
            # (Tansu 0.6) honours only this one (a 1 MiB partition bound under a 64 MiB request
            # bound came back as 5 MiB: tests/integration/test_partition_reader_bounds.py).
            # librdkafka refuses less than its message.max.bytes (1,000,000).
            fetch_max_bytes=max(fetch_bytes, _MIN_FETCH_MAX_BYTES),
            max_queued_bytes=queued_bytes,
        )

    return PartitionReader(consumer, topic, partition, pace)


def record_producer(
    kafka: KafkaConnection,
    *,
    acks: Acks = "all",
    linger_ms: int | None = None,
    max_request_size: int = 1_048_576,
    batch_size: int | None = None,
    idempotent: bool = False,
    delivery_timeout_ms: int | None = None,
) -> RecordProducer:
    """A producer; ``max_request_size`` bounds one record (with its framing). A keyed record
    without an explicit partition goes where :mod:`streamtrain.kafka.partitioner` says
    (murmur2, as the Java client), with either library.

    ``idempotent``: the broker drops the duplicates a retry would write (needs ``acks="all"``).
    ``delivery_timeout_ms``: a record not acknowledged by then, retries included, fails its
    future; with kafka-python it also bounds how long ``send`` blocks waiting for metadata.
    0: no limit (librdkafka's own meaning; kafka-python gets its largest value).
    ``linger_ms``: None takes the connection's ``producer_linger_ms``.
    """
    _prepare(kafka)
    if linger_ms is None:
        linger_ms = kafka.producer_linger_ms
    if idempotent and acks != "all":
        raise ValueError(f"an idempotent producer needs acks='all', got acks={acks!r}")
    if kafka.client == "kafka-python":
        from streamtrain.kafka.producer import KafkaPythonProducer

        extra: dict[str, object] = {} if batch_size is None else {"batch_size": batch_size}
        if idempotent:
            extra["enable_idempotence"] = True
        if delivery_timeout_ms == 0:
            delivery_timeout_ms = 2**31 - 1
        if delivery_timeout_ms is not None:
            extra["delivery_timeout_ms"] = delivery_timeout_ms
            extra["max_block_ms"] = delivery_timeout_ms
            # kafka-python refuses a delivery timeout under linger + request timeout; no
            # request may outlive the record's deadline anyway.
            request_ms = int(kafka.options.get("request_timeout_ms", 30_000))
            extra["request_timeout_ms"] = max(
                1, min(request_ms, delivery_timeout_ms - linger_ms - 1)
            )
        from kafka.partitioner import DefaultPartitioner  # murmur2: kafka/partitioner.py

        return KafkaPythonProducer(
            kafka.kafka_python(
                acks=acks,
                linger_ms=linger_ms,
                max_request_size=max_request_size,
                partitioner=DefaultPartitioner(),
                **extra,
            )
        )
    from streamtrain.kafka.producer import ConfluentProducer

    config: dict[str, object] = {
        "acks": -1 if acks == "all" else acks,
        "linger.ms": linger_ms,
        "message.max.bytes": max_request_size,
        # One partitioning rule whatever the library (kafka/partitioner.py): kafka-python's
        # default is already murmur2; librdkafka's (CRC32) would split a key's records.
        "partitioner": LIBRDKAFKA_PARTITIONER,
    }
    if batch_size is not None:
        config["batch.size"] = batch_size
    if idempotent:
        config["enable.idempotence"] = True
    if delivery_timeout_ms is not None:
        config["message.timeout.ms"] = delivery_timeout_ms
    return ConfluentProducer(quiet_librdkafka(kafka.librdkafka(config)))


def co_partitioned_group(
    kafka: KafkaConnection,
    *,
    topics: tuple[str, str],
    group_id: str,
    on_assign: OnAssign,
    on_revoke: OnRevoke,
    session_timeout_ms: int = 6000,
    fetch_max_wait_ms: int = 10,
) -> CoPartitionedGroup:
    """A group member for partition pairs of two co-partitioned topics (range assignor).

    Always confluent-kafka (see :mod:`streamtrain.kafka.group_consumer` for why)."""
    from streamtrain.kafka.group_consumer import CoPartitionedGroup

    _prepare(kafka)
    config = kafka.librdkafka(
        {
            "group.id": group_id,
            "partition.assignment.strategy": "range",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(100, session_timeout_ms // 6),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": fetch_max_wait_ms,
            "fetch.queue.backoff.ms": 10,
        }
    )
    return CoPartitionedGroup(
        config=config, topics=topics, on_assign=on_assign, on_revoke=on_revoke
    )
