"""Every Prometheus metric streamtrain exports, defined once.

Three registries keep each process's ``/metrics`` to what it does: ``TRAINER_REGISTRY`` (ingest,
training, checkpoints, snapshot publishing), ``SERVER_REGISTRY`` (serving) and ``JOIN_REGISTRY``
(the delayed-label join). Names carry the
``streamtrain_`` prefix and their unit; ``docs/metrics.md`` explains each one.
"""

from __future__ import annotations

import contextlib
import platform
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

TRAINER_REGISTRY = CollectorRegistry(auto_describe=True)
SERVER_REGISTRY = CollectorRegistry(auto_describe=True)
JOIN_REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets from 100 µs to a minute: a small MLP steps in well under a millisecond, while a
# CNN or transformer step on a large CPU batch, or a large inference request, takes seconds; the
# top buckets keep those out of +Inf (docs/metrics.md has the measured figures).
_FAST = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_SLOW = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)

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
TRAIN_STEPS = Counter(
    "streamtrain_train_steps", "Optimizer steps applied.", registry=TRAINER_REGISTRY
)
TRAIN_SAMPLES = Counter(
    "streamtrain_train_samples", "Samples the model has learned from.", registry=TRAINER_REGISTRY
)
TRAIN_SKIPPED_STEPS = Counter(
    "streamtrain_train_skipped_steps",
    "Steps not applied because the loss or a gradient was not finite.",
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
TRAIN_LOSS = Gauge(
    "streamtrain_train_loss", "Rolling mean training loss.", registry=TRAINER_REGISTRY
)
TRAIN_ACCURACY = Gauge(
    "streamtrain_train_prequential_accuracy_ratio",
    "Rolling prequential (test-then-train) accuracy, classification only.",
    registry=TRAINER_REGISTRY,
)
TRAIN_MAE = Gauge(
    "streamtrain_train_prequential_mae",
    "Rolling prequential mean absolute error, regression only.",
    registry=TRAINER_REGISTRY,
)
TRAIN_LEARNING_RATE = Gauge(
    "streamtrain_train_learning_rate", "Current learning rate.", registry=TRAINER_REGISTRY
)
TRAIN_STEP_SECONDS = Histogram(
    "streamtrain_train_step_seconds",
    "Wall time of one training step.",
    buckets=_FAST,
    registry=TRAINER_REGISTRY,
)
TRAIN_ALLREDUCE_SECONDS = Histogram(
    "streamtrain_train_allreduce_seconds",
    "Wall time of one step's gradient all-reduce across trainer ranks (distributed only).",
    buckets=_FAST,
    registry=TRAINER_REGISTRY,
)
TRAIN_THROUGHPUT = Gauge(
    "streamtrain_train_samples_per_second",
    "Samples trained per second, recent average.",
    registry=TRAINER_REGISTRY,
)
TRAIN_DATA_WATERMARK = Gauge(
    "streamtrain_train_data_watermark_timestamp_seconds",
    "Newest sample timestamp the model has learned from.",
    registry=TRAINER_REGISTRY,
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
    registry=TRAINER_REGISTRY,
)
SNAPSHOT_PUBLISH_SECONDS = Histogram(
    "streamtrain_snapshot_publish_seconds",
    "Serialize-and-produce time of one snapshot.",
    buckets=_SLOW,
    registry=TRAINER_REGISTRY,
)
SNAPSHOT_VERSION = Gauge(
    "streamtrain_snapshot_version",
    "Version (trainer step) of the last published snapshot.",
    registry=TRAINER_REGISTRY,
)

# --- serving ------------------------------------------------------------------------------
SERVE_REQUESTS = Counter(
    "streamtrain_serve_requests",
    "Inference requests, by outcome (ok, bad_request, ...).",
    ["outcome"],
    registry=SERVER_REGISTRY,
)
SERVE_REQUEST_SECONDS = Histogram(
    "streamtrain_serve_request_seconds",
    "Inference request latency.",
    buckets=_FAST,
    registry=SERVER_REGISTRY,
)
SERVE_SWAPS = Counter(
    "streamtrain_serve_swaps",
    "Snapshots swapped in as the live weights.",
    registry=SERVER_REGISTRY,
)
SERVE_REJECTED_SNAPSHOTS = Counter(
    "streamtrain_serve_rejected_snapshots",
    "Snapshots refused, by reason.",
    ["reason"],
    registry=SERVER_REGISTRY,
)
SERVE_PINNED_VERSION = Gauge(
    "streamtrain_serve_pinned_version",
    "Version an operator pinned as the live one (0 when not pinned).",
    registry=SERVER_REGISTRY,
)
SERVE_RETAINED_VERSIONS = Gauge(
    "streamtrain_serve_retained_versions",
    "Verified versions held in memory, each answering /v2/models/{m}/versions/{v}/infer.",
    registry=SERVER_REGISTRY,
)
SERVE_MODEL_VERSION = Gauge(
    "streamtrain_serve_model_version",
    "Version of the live weights (0 before the first).",
    registry=SERVER_REGISTRY,
)
SERVE_SWAP_SECONDS = Histogram(
    "streamtrain_serve_swap_seconds",
    "Time to load a snapshot into standby and swap it live.",
    buckets=_FAST,
    registry=SERVER_REGISTRY,
)
SERVE_DATA_AGE = Gauge(
    "streamtrain_serve_data_age_seconds",
    "Now minus the newest sample timestamp behind the live weights.",
    registry=SERVER_REGISTRY,
)
SERVE_SINCE_SWAP = Gauge(
    "streamtrain_serve_since_swap_seconds",
    "Seconds since the live weights last changed.",
    registry=SERVER_REGISTRY,
)
SERVE_DATA_TIMESTAMP = Gauge(
    "streamtrain_serve_data_timestamp_seconds",
    "Newest sample timestamp behind the live weights (Unix time).",
    registry=SERVER_REGISTRY,
)
SERVE_SWAP_TIMESTAMP = Gauge(
    "streamtrain_serve_last_swap_timestamp_seconds",
    "Unix time the live weights last changed (0 before the first).",
    registry=SERVER_REGISTRY,
)
SERVE_BATCH_SIZE = Histogram(
    "streamtrain_serve_batch_size_rows",
    "Rows per forward pass.",
    buckets=_SIZES,
    registry=SERVER_REGISTRY,
)
# The prediction log (serve.prediction_log): one record per served sample, off the request path.
SERVE_PREDICTION_LOG_RECORDS = Counter(
    "streamtrain_serve_prediction_log_records",
    "Prediction-log records the broker acknowledged.",
    registry=SERVER_REGISTRY,
)
SERVE_PREDICTION_LOG_DROPPED = Counter(
    "streamtrain_serve_prediction_log_dropped_records",
    "Served samples not logged, by reason (queue_full, produce_error, unflushed, encode_error).",
    ["reason"],
    registry=SERVER_REGISTRY,
)
SERVE_PREDICTION_LOG_QUEUE = Gauge(
    "streamtrain_serve_prediction_log_queue_records",
    "Prediction-log records held: waiting to be sent or not yet acknowledged.",
    registry=SERVER_REGISTRY,
)
SERVE_PREDICTION_LOG_PRODUCE_SECONDS = Histogram(
    "streamtrain_serve_prediction_log_produce_seconds",
    "Time from sending a prediction-log record to the writer seeing its acknowledgement.",
    buckets=_FAST,
    registry=SERVER_REGISTRY,
)
SERVE_PREDICTION_LOG_RECORD_BYTES = Histogram(
    "streamtrain_serve_prediction_log_record_size_bytes",
    "Size of one prediction-log record value.",
    buckets=(64, 128, 256, 512, 1024, 4096, 16384, 65536, 262144, 1_048_576),
    registry=SERVER_REGISTRY,
)


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
JOIN_CHECKPOINT_AGE = Gauge(
    "streamtrain_join_checkpoint_age_seconds",
    "Seconds since the last join checkpoint was written.",
    registry=JOIN_REGISTRY,
)


# --- both processes: what is running -------------------------------------------------------
def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "none"


BUILD_LABELS = {
    "version": _version("streamtrain"),
    "python": platform.python_version(),
    "torch": _version("torch"),
    "confluent_kafka": _version("confluent-kafka"),
    "kafka_python": _version("kafka-python"),
}
TRAIN_BUILD_INFO = Info(
    "streamtrain_build", "Versions of streamtrain and its engines.", registry=TRAINER_REGISTRY
)
SERVE_BUILD_INFO = Info(
    "streamtrain_build", "Versions of streamtrain and its engines.", registry=SERVER_REGISTRY
)
TRAIN_MODEL_INFO = Info(
    "streamtrain_model", "The model this process trains or serves.", registry=TRAINER_REGISTRY
)
SERVE_MODEL_INFO = Info(
    "streamtrain_model", "The model this process trains or serves.", registry=SERVER_REGISTRY
)
JOIN_BUILD_INFO = Info(
    "streamtrain_build", "Versions of streamtrain and its engines.", registry=JOIN_REGISTRY
)
for _info in (TRAIN_BUILD_INFO, SERVE_BUILD_INFO, JOIN_BUILD_INFO):
    _info.info(BUILD_LABELS)
# Operators expect process_* (CPU, memory, open files) and python_* next to the app's metrics;
# custom registries get none of them unless asked.
for _registry in (TRAINER_REGISTRY, SERVER_REGISTRY, JOIN_REGISTRY):
    ProcessCollector(registry=_registry)
    PlatformCollector(registry=_registry)
    GCCollector(registry=_registry)


def export_cuda_metrics() -> None:
    """Add the CUDA-only metrics to the trainer's registry (once; call when training on CUDA)."""
    for metric in CUDA_ONLY:
        with contextlib.suppress(ValueError):  # already registered
            TRAINER_REGISTRY.register(metric)


def model_info_labels(model: Mapping[str, Any], settings_hash: str) -> dict[str, str]:
    """``streamtrain_model_info`` labels from the model settings (``model.*`` as JSON)."""
    shape = "x".join(str(d) for d in model.get("input_shape") or ())
    return {
        "name": str(model.get("name")),
        "task": str(model.get("task")),
        "input_shape": shape,
        "num_classes": str(model.get("num_classes")),
        "settings_hash": settings_hash[:16],
    }


def serve_metrics(
    registry: CollectorRegistry,
    port: int,
    host: str = "0.0.0.0",
    routes: Mapping[str, WSGIApp] | None = None,
) -> WSGIServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread.

    ``routes`` mounts more exact paths beside it (the trainer's ``/health/live`` and
    ``/health/ready``); every other path answers what prometheus_client's own server answers.
    Port 0 picks a free port; read it back from ``server.server_port``.
    """
    exposition: WSGIApp = make_wsgi_app(registry)
    extra = dict(routes or {})

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = extra.get(environ.get("PATH_INFO", ""), exposition)
        return route(environ, start_response)

    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(str(address[0]), port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="streamtrain-metrics", daemon=True).start()
    return server


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds would flood stderr with access lines."""

    def log_message(self, format: str, *args: Any) -> None:
        return
