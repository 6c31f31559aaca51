"""Settings -> a join ready to run: policy, clients, group member (``streamtrain join``)."""

from __future__ import annotations

from dataclasses import dataclass

from streamtrain import metrics
from streamtrain.config import Settings
from streamtrain.ingest.deadletter import KafkaDeadLetter
from streamtrain.join.input_logs import InputLogs, kafka_verify
from streamtrain.join.joiner import Joiner, JoinTopics
from streamtrain.join.partition_state import JoinPolicy
from streamtrain.join.samples_log import SamplesLog
from streamtrain.join.samples_out import SamplesOut
from streamtrain.kafka import (
    KafkaConnection,
    co_partitioned_group,
    create_topics,
    record_producer,
)
from streamtrain.kafka.group_consumer import CoPartitionedGroup
from streamtrain.quality.books import VersionBooks
from streamtrain.quality.partitions import PartitionedQuality
from streamtrain.sample.spec import spec_for_model
from streamtrain.wire.label_record import LabelError, decode_label, encode_label_json


def join_policy(settings: Settings) -> JoinPolicy:
    """The join policy of the settings; ValueError (one line) for a default label the model
    cannot take."""
    join = settings.join
    spec = spec_for_model(settings.model)
    default = None
    if join.on_expired == "default_label":
        raw = join.default_label
        try:
            default = decode_label(spec, encode_label_json("default", raw), None, None, 0.0).label
        except LabelError as exc:
            raise ValueError(
                f"join.default_label {raw!r} does not fit the model ({exc.detail}); give a "
                "class index for classification or target_dim numbers for regression"
            ) from None
    return JoinPolicy(
        spec,
        window_s=join.window_s,
        default_label=default,
        default_weight=join.default_weight,
        label_wait_s=join.label_wait_s,
        remember_s=join.remember_s,
        max_pending_predictions=join.max_pending_predictions,
        max_pending_labels=join.max_pending_labels,
        max_remembered_ids=join.max_remembered_ids,
    )


def served_quality(settings: Settings) -> PartitionedQuality | None:
    """The join's served-quality scoring, exported on its /metrics (None when switched off):
    bounded as the join's own pending predictions and labels."""
    join = settings.join
    if not join.quality:
        metrics.SERVED_QUALITY.attach(None)
        return None
    shape = VersionBooks(
        spec_for_model(settings.model), join.quality_versions, join.quality_window_s
    )
    quality = PartitionedQuality(shape, join.max_pending_predictions, join.max_pending_labels)
    metrics.SERVED_QUALITY.attach(quality.series)
    return quality


@dataclass
class RunningJoin:
    """A join and the clients it owns; :meth:`close` leaves the group (checkpointing first)."""

    joiner: Joiner
    group: CoPartitionedGroup
    samples: SamplesOut
    dead_letters: KafkaDeadLetter
    samples_log: SamplesLog

    def close(self) -> None:
        self.group.close()
        self.samples.close(30.0)
        self.dead_letters.close()
        self.samples_log.close()


def build_join(settings: Settings, *, create_missing_topics: bool = True) -> RunningJoin:
    """Clients, policy and group member for ``settings``; Kafka errors propagate."""
    policy = join_policy(settings)
    kafka = KafkaConnection.from_settings(settings.kafka)
    topics = settings.topics
    if create_missing_topics:
        # Predictions and labels must be co-partitioned: created here, both get the samples
        # topic's partition count (a server that created the prediction log decides it).
        create_topics(
            kafka, [topics.samples, topics.predictions, topics.labels], topics.sample_partitions
        )
        create_topics(kafka, [topics.labels_dead_letter], 1)
    # No delivery timeout: a sample queued when the broker goes away waits for it to come
    # back instead of failing (the outage ordering of streamtrain.join.joiner).
    samples = SamplesOut(
        lambda: record_producer(kafka, acks="all", delivery_timeout_ms=0),
        topics.samples,
        topics.predictions,
    )
    dead_letters = KafkaDeadLetter(
        topic=topics.labels_dead_letter, kafka=kafka, errors=metrics.JOIN_DEAD_LETTER_ERRORS
    )
    samples_log = SamplesLog(kafka, topics.samples, timeout_s=settings.kafka.connect_timeout_s)
    joiner = Joiner(
        policy=policy,
        topics=JoinTopics(topics.predictions, topics.labels, topics.samples),
        samples=samples,
        dead_letters=dead_letters,
        samples_log=samples_log,
        state_dir=settings.join.state_dir,
        checkpoint_every_s=settings.join.checkpoint_every_s,
        on_log_lost=settings.join.on_log_lost,
        input_logs=InputLogs(
            topics.predictions, topics.labels, kafka_verify(kafka), settings.join.on_log_lost
        ),
        quality=served_quality(settings),
    )
    group = co_partitioned_group(
        kafka,
        topics=(topics.predictions, topics.labels),
        group_id=settings.join.group_id,
        on_assign=joiner.on_assign,
        on_revoke=joiner.on_revoke,
        session_timeout_ms=settings.join.session_timeout_ms,
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
    )
    joiner.attach(group)
    return RunningJoin(joiner, group, samples, dead_letters, samples_log)
