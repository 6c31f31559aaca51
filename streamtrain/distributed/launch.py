"""What ``build_trainer`` needs to turn one process into one rank of a distributed trainer."""

from __future__ import annotations

from collections.abc import Sequence

from streamtrain.distributed.group import RankGroup, assign_partitions
from streamtrain.kafka import KafkaConnection
from streamtrain.kafka.consumer import RecordConsumer
from streamtrain.kafka.factory import record_consumer


def rank_consumer(
    kafka: KafkaConnection,
    *,
    topic: str,
    group_id: str,
    fetch_max_wait_ms: int,
    wanted: Sequence[int] | None,
    group: RankGroup,
) -> tuple[RecordConsumer, tuple[int, ...], tuple[int, ...]]:
    """A consumer for this rank, every partition the job reads, and this rank's share of them.

    The job reads ``wanted`` (``ingest.partitions``) or else every partition of ``topic``; the
    share is :func:`assign_partitions`'s. The consumer is the one the sample source then uses
    (built like the source would build it), so asking for the partition list costs nothing.
    """
    consumer = record_consumer(
        kafka,
        topic=topic,
        group_id=group_id,
        fetch_max_wait_ms=fetch_max_wait_ms,
        out_of_range="raise",
    )
    try:
        everything = tuple(sorted(wanted)) if wanted else consumer.partitions_of_topic()
        share = assign_partitions(everything, group.rank, group.world_size)
    except BaseException:
        consumer.close()
        raise
    return consumer, everything, share
