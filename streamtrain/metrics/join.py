"""The delayed-label join's metrics (``JOIN_REGISTRY``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streamtrain.metrics.registries import _SLOW, JOIN_REGISTRY

# --- join (delayed labels) -----------------------------------------------------------------
# Label delays from tens of milliseconds (a click) to an hour (a purchase).
_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
JOIN_RECORDS = Counter(
    "streamtrain_join_records",
    "Prediction-log and label records the join consumed.",
    ["topic"],
    registry=JOIN_REGISTRY,
)
JOIN_SAMPLES = Counter(
    "streamtrain_join_emitted_samples",
    "Training samples the join emitted, by how they got their label.",
    ["outcome"],
    registry=JOIN_REGISTRY,
)
JOIN_LABEL_DELAY = Histogram(
    "streamtrain_join_label_delay_seconds",
    "Label timestamp minus served_at, for joined labels.",
    buckets=_DELAYS,
    registry=JOIN_REGISTRY,
)
JOIN_EXPIRED = Counter(
    "streamtrain_join_expired_predictions",
    "Predictions whose label did not come in time, by policy and cause.",
    ["policy", "cause"],
    registry=JOIN_REGISTRY,
)
JOIN_DEAD_LETTERS = Counter(
    "streamtrain_join_dead_lettered_records",
    "Records the join sent to the labels dead-letter topic, by source and reason.",
    ["source", "reason"],
    registry=JOIN_REGISTRY,
)
JOIN_DEAD_LETTER_ERRORS = Counter(
    "streamtrain_join_dead_letter_errors",
    "Records that could not be written to the labels dead-letter topic.",
    registry=JOIN_REGISTRY,
)
JOIN_PENDING_PREDICTIONS = Gauge(
    "streamtrain_join_pending_predictions_records",
    "Predictions waiting for their label, over the assigned partitions.",
    registry=JOIN_REGISTRY,
)
JOIN_PENDING_LABELS = Gauge(
    "streamtrain_join_pending_labels_records",
    "Labels waiting for their prediction, over the assigned partitions.",
    registry=JOIN_REGISTRY,
)
JOIN_ASSIGNED = Gauge(
    "streamtrain_join_assigned_partitions",
    "Partition pairs this join replica holds.",
    registry=JOIN_REGISTRY,
)
JOIN_ASSIGN_SECONDS = Histogram(
    "streamtrain_join_assign_seconds",
    "Time to take over partitions: load checkpoints and read back emitted samples.",
    buckets=_SLOW,
    registry=JOIN_REGISTRY,
)
JOIN_CHECKPOINT_SECONDS = Histogram(
    "streamtrain_join_checkpoint_seconds",
    "Time to write one join checkpoint (flush, samples ends, state files).",
    buckets=_SLOW,
    registry=JOIN_REGISTRY,
)
JOIN_CHECKPOINT_BYTES = Gauge(
    "streamtrain_join_checkpoint_bytes",
    "Size of the last join checkpoint, all assigned partitions.",
    registry=JOIN_REGISTRY,
)
JOIN_LOG_RESETS = Counter(
    "streamtrain_join_log_resets_total",
    "Times the join started over because Kafka lost the samples its checkpoints saw.",
    registry=JOIN_REGISTRY,
)
# relog (issue 23): labels placed by another partitioner than the prediction log's.
JOIN_MISROUTED_LABELS = Counter(
    "streamtrain_join_misrouted_labels_total",
    "Labels found on another partition than the one murmur2 (the prediction log's "
    "partitioner) gives their key; they cannot meet their predictions.",
    registry=JOIN_REGISTRY,
)
JOIN_INPUT_RESETS = Counter(
    "streamtrain_join_input_resets_total",
    "Times a predictions or labels partition was not the log the join read (its record at "
    "the checkpointed position differed) and was read again from its start.",
    ["topic"],
    registry=JOIN_REGISTRY,
)
JOIN_CHECKPOINT_AGE = Gauge(
    "streamtrain_join_checkpoint_age_seconds",
    "Seconds since the last join checkpoint was written.",
    registry=JOIN_REGISTRY,
)
