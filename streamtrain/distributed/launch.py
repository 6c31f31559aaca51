"""What ``build_trainer`` needs to turn one process into one rank of a distributed trainer."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from streamtrain.distributed.group import RankGroup, assign_partitions
from streamtrain.kafka import KafkaConnection
from streamtrain.kafka.consumer import RecordConsumer
from streamtrain.kafka.factory import record_consumer

if TYPE_CHECKING:
    from streamtrain.config import Settings


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


def relaunch_under_torchrun(nproc: int, max_restarts: int, argv: Sequence[str]) -> NoReturn:
    """Replace this process by ``torchrun --standalone --nproc-per-node nproc`` running the
    same ``train`` command without ``--nproc`` (one host; several hosts use torchrun itself)."""
    if RankGroup.launched_by_torchrun():
        raise SystemExit("--nproc cannot be used inside torchrun: torchrun already sets the ranks")
    rest = list(argv[list(argv).index("train") + 1 :])
    kept: list[str] = []
    skip = False
    for arg in rest:
        if skip:
            skip = False
        elif arg in ("--nproc", "--max-restarts"):
            skip = True
        elif not arg.startswith(("--nproc=", "--max-restarts=")):
            kept.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "streamtrain.cli",
        "train",
        *kept,
    ]
    os.execv(sys.executable, command)


def check_rank_share(settings: Settings, nproc: int) -> None:
    """Raise :class:`PartitionShareError` if ``nproc`` ranks cannot each get a partition of
    the samples topic (as it is, or as ``streamtrain train`` would create it)."""
    wanted = settings.ingest.partitions
    if wanted:
        assign_partitions(wanted, 0, nproc)
        return
    kafka = KafkaConnection.from_settings(settings.kafka)
    consumer = record_consumer(kafka, topic=settings.topics.samples)
    try:
        if consumer.topic_exists():
            partitions = consumer.partitions_of_topic()
        else:
            partitions = tuple(range(settings.topics.sample_partitions))
    finally:
        consumer.close()
    assign_partitions(partitions, 0, nproc)
