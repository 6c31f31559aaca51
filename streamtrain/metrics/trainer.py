"""The trainer's metrics: ingest, training, checkpoints, snapshot publishing (and the
Kafka reachability gauge of every process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streamtrain.metrics.registries import (
    _FAST,
    _SIZES,
    _SLOW,
    JOIN_REGISTRY,
    SERVER_REGISTRY,
    TRAINER_REGISTRY,
)

# --- ingest -------------------------------------------------------------------------------
INGEST_RECORDS = Counter(
    "streamtrain_ingest_records",
    "Kafka records consumed, valid or not.",
    ["topic"],
    registry=TRAINER_REGISTRY,
)
INGEST_SAMPLES = Counter(
    "streamtrain_ingest_samples", "Samples that passed validation.", registry=TRAINER_REGISTRY
)
INGEST_REJECTED = Counter(
    "streamtrain_ingest_rejected_records",
    "Records rejected and sent to the dead-letter topic, by reason.",
    ["reason"],
    registry=TRAINER_REGISTRY,
)
INGEST_DEAD_LETTER_ERRORS = Counter(
    "streamtrain_ingest_dead_letter_errors",
    "Rejected records that could not be written to the dead-letter topic.",
    registry=TRAINER_REGISTRY,
)
INGEST_BATCH_SIZE = Histogram(
    "streamtrain_ingest_batch_size_samples",
    "Samples per micro-batch.",
    buckets=_SIZES,
    registry=TRAINER_REGISTRY,
)
INGEST_LAG = Gauge(
    "streamtrain_ingest_consumer_lag_records",
    "High watermark minus next offset to read, per partition.",
    ["partition"],
    registry=TRAINER_REGISTRY,
)
INGEST_PARTITION_WAITS_EXPIRED = Counter(
    "streamtrain_ingest_partition_waits_expired",
    "Times ingest stopped waiting for a partition with unfetched records after "
    "ingest.max_partition_idle_ms: batches may then differ from a replay of the log.",
    ["partition"],
    registry=TRAINER_REGISTRY,
)
INGEST_OFFSET_RESETS = Counter(
    "streamtrain_ingest_offset_resets",
    "Times a partition's log no longer held the next offset, by partition and policy applied.",
    ["partition", "policy"],
    registry=TRAINER_REGISTRY,
)
# Issue 32: records in the log but no fetch delivers any (a stalled broker), not a busy trainer.
INGEST_STARVED_SECONDS = Gauge(
    "streamtrain_ingest_starved_seconds",
    "Seconds records have waited past the trainer's fetch position with no record delivered "
    "(0 while records flow or the log is caught up).",
    registry=TRAINER_REGISTRY,
)
# One gauge per registry, same name: each process's /metrics says whether it reaches Kafka.
_KAFKA_REACHABLE_HELP = "1 while this process reaches the Kafka cluster, 0 during an outage."
KAFKA_REACHABLE_TRAINER = Gauge(
    "streamtrain_kafka_reachable", _KAFKA_REACHABLE_HELP, registry=TRAINER_REGISTRY
)
KAFKA_REACHABLE_SERVER = Gauge(
    "streamtrain_kafka_reachable", _KAFKA_REACHABLE_HELP, registry=SERVER_REGISTRY
)
KAFKA_REACHABLE_JOIN = Gauge(
    "streamtrain_kafka_reachable", _KAFKA_REACHABLE_HELP, registry=JOIN_REGISTRY
)
INGEST_DECODE_SECONDS = Histogram(
    "streamtrain_ingest_decode_seconds",
    "Time to decode and validate one poll's records.",
    buckets=_FAST,
    registry=TRAINER_REGISTRY,
)

# --- training -----------------------------------------------------------------------------
# Two counts, two words: a trainer *step* is one micro-batch learned (what snapshot versions
# and checkpoints count: streamtrain_snapshot_version); an *optimizer update* is one
# optimizer.step(), several per trainer step under optimizer.step_samples.
TRAIN_OPTIMIZER_UPDATES = Counter(
    "streamtrain_train_optimizer_updates",
    "Optimizer updates applied (several per trainer step under optimizer.step_samples).",
    registry=TRAINER_REGISTRY,
)
TRAIN_STEP = Gauge(
    "streamtrain_train_step",
    "The trainer step: micro-batches learned over the run, restored from the checkpoint; "
    "a snapshot's version is the step it was taken at.",
    registry=TRAINER_REGISTRY,
)
TRAIN_SAMPLES = Counter(
    "streamtrain_train_samples", "Samples the model has learned from.", registry=TRAINER_REGISTRY
)
TRAIN_SKIPPED_UPDATES = Counter(
    "streamtrain_train_skipped_updates",
    "Optimizer updates not applied because the loss or a gradient was not finite.",
    registry=TRAINER_REGISTRY,
)
TRAIN_ROLLBACKS = Counter(
    "streamtrain_train_rollbacks",
    "Restores of the last good state after repeated bad steps.",
    registry=TRAINER_REGISTRY,
)
TRAIN_HELD_SNAPSHOTS = Counter(
    "streamtrain_train_held_snapshots",
    "Snapshots the promotion gate did not publish, by reason (regressed, non_finite).",
    ["reason"],
    registry=TRAINER_REGISTRY,
)
TRAIN_DRIFT_EVENTS = Counter(
    "streamtrain_train_drift_events",
    "Drift detected in the prequential loss (train.drift_detector).",
    registry=TRAINER_REGISTRY,
)
# Registered on their first value (export_on_first_value): absent before it rather than a
# misleading 0 (a fresh trainer does not "have accuracy 0"); the accuracy only by a classifier,
# the MAE only by a regressor, the all-reduce time only by a distributed trainer.
TRAIN_LOSS = Gauge("streamtrain_train_loss", "Rolling mean training loss.", registry=None)
TRAIN_ACCURACY = Gauge(
    "streamtrain_train_prequential_accuracy_ratio",
    "Rolling prequential (test-then-train) accuracy, classification only.",
    registry=None,
)
TRAIN_MAE = Gauge(
    "streamtrain_train_prequential_mae",
    "Rolling prequential mean absolute error, regression only.",
    registry=None,
)
TRAIN_LEARNING_RATE = Gauge(
    "streamtrain_train_learning_rate", "Current learning rate.", registry=None
)
TRAIN_STEP_SECONDS = Histogram(
    "streamtrain_train_step_seconds",
    "Wall time of one trainer step: one micro-batch, all its optimizer updates.",
    buckets=_FAST,
    registry=TRAINER_REGISTRY,
)
TRAIN_ALLREDUCE_SECONDS = Histogram(
    "streamtrain_train_allreduce_seconds",
    "Wall time of one step's gradient all-reduce across trainer ranks (distributed only).",
    buckets=_FAST,
    registry=None,
)
# row-wise sharded tables (distributed/row_exchange.py): exported on their first value
TRAIN_ALLTOALL_SECONDS = Histogram(
    "streamtrain_train_alltoall_seconds",
    "Wall time of one step's all-to-all exchanges of sharded table rows and their gradients.",
    buckets=_FAST,
    registry=None,
)
TRAIN_ALLTOALL_BYTES = Counter(
    "streamtrain_train_alltoall_bytes",
    "Bytes this rank sent to other ranks in all-to-all exchanges of sharded table rows.",
    registry=None,
)
TRAIN_THROUGHPUT = Gauge(
    "streamtrain_train_samples_per_second",
    "Samples trained per second, recent average.",
    registry=TRAINER_REGISTRY,
)
TRAIN_DATA_WATERMARK = Gauge(
    "streamtrain_train_data_watermark_timestamp_seconds",
    "Newest sample timestamp the model has learned from.",
    registry=None,
)
# Registered only when the trainer runs on CUDA (export_cuda_metrics): on CPU it would read a
# misleading 0.
TRAIN_CUDA_MEMORY = Gauge(
    "streamtrain_train_cuda_memory_allocated_bytes",
    "CUDA memory held by tensors (CUDA only).",
    registry=None,
)
CUDA_ONLY = (TRAIN_CUDA_MEMORY,)
CHECKPOINTS = Counter("streamtrain_checkpoints", "Checkpoints written.", registry=TRAINER_REGISTRY)
CHECKPOINT_SECONDS = Histogram(
    "streamtrain_checkpoint_seconds",
    "Time to write one checkpoint.",
    buckets=_SLOW,
    registry=TRAINER_REGISTRY,
)
CHECKPOINT_AGE = Gauge(
    "streamtrain_checkpoint_age_seconds",
    "Seconds since the last checkpoint was written.",
    registry=TRAINER_REGISTRY,
)
CHECKPOINT_TIMESTAMP = Gauge(
    "streamtrain_checkpoint_last_timestamp_seconds",
    "Unix time the last checkpoint was written (0 before the first).",
    registry=TRAINER_REGISTRY,
)

# --- snapshot publishing ------------------------------------------------------------------
SNAPSHOTS_PUBLISHED = Counter(
    "streamtrain_snapshot_published", "Snapshots published.", registry=TRAINER_REGISTRY
)
SNAPSHOTS_SUPERSEDED = Counter(
    "streamtrain_snapshot_superseded",
    "Snapshots dropped unpublished because a newer one was due first.",
    registry=TRAINER_REGISTRY,
)
SNAPSHOT_PUBLISH_ERRORS = Counter(
    "streamtrain_snapshot_publish_errors",
    "Snapshots that failed to publish.",
    registry=TRAINER_REGISTRY,
)
SNAPSHOT_BYTES = Gauge(
    "streamtrain_snapshot_size_bytes",
    "Size of the last published snapshot.",
    registry=None,
)
SNAPSHOT_PUBLISH_SECONDS = Histogram(
    "streamtrain_snapshot_publish_seconds",
    "Serialize-and-produce time of one snapshot.",
    buckets=_SLOW,
    registry=TRAINER_REGISTRY,
)
# --- large (issue 26): the training thread's pause per snapshot ---
SNAPSHOT_STALL_SECONDS = Histogram(
    "streamtrain_snapshot_stall_seconds",
    "Time the training thread spent on one snapshot's copy of the weights (for a whole "
    "snapshot copied in the background, including the rows saved before later steps).",
    buckets=_FAST,
    registry=TRAINER_REGISTRY,
)
SNAPSHOT_VERSION = Gauge(
    "streamtrain_snapshot_version",
    "Version (trainer step) of the last published snapshot.",
    registry=None,
)

# Every trainer metric registered on its first value (see TRAIN_LOSS): the last publish's size
# and version before the first publish, the data watermark before the first sample, have none.
ON_FIRST_VALUE = (
    TRAIN_LOSS,
    TRAIN_ACCURACY,
    TRAIN_MAE,
    TRAIN_LEARNING_RATE,
    TRAIN_ALLREDUCE_SECONDS,
    TRAIN_ALLTOALL_SECONDS,
    TRAIN_ALLTOALL_BYTES,
    TRAIN_DATA_WATERMARK,
    SNAPSHOT_BYTES,
    SNAPSHOT_VERSION,
)
