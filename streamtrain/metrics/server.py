"""The serving metrics (``SERVER_REGISTRY``): requests, swaps, snapshots, the prediction log."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streamtrain.metrics.batched import BatchedCounter, BatchedHistogram
from streamtrain.metrics.registries import _FAST, _SIZES, SERVER_REGISTRY

# --- serving ------------------------------------------------------------------------------
# Counted once or twice per infer request: batched, written into the metric at each scrape.
SERVE_REQUESTS = BatchedCounter(
    "streamtrain_serve_requests",
    "Inference requests, by outcome (ok, bad_request, ...).",
    ["outcome"],
    registry=SERVER_REGISTRY,
)
SERVE_REQUEST_SECONDS = BatchedHistogram(
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
SERVE_STREAMED_LOADS = Counter(
    "streamtrain_serve_streamed_loads",
    "Bases made live from standby tensors written while their chunks were read (a new "
    "replica's first base, issue 26), without a copy after the read.",
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
SERVE_BATCH_SIZE = BatchedHistogram(
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
# --- traffic split and shadow (issue 28, serve/protocol/split.py) ---------------------------
SERVE_ARM_REQUESTS = BatchedCounter(  # once per infer request naming no version
    "streamtrain_serve_arm_requests_total",
    "Infer requests naming no version, by the arm that took them: live, candidate (answered "
    "by the split's candidate) or shadow (answered live, the candidate computed and logged).",
    ["arm"],
    registry=SERVER_REGISTRY,
)
SERVE_SPLIT_SHARE = Gauge(
    "streamtrain_serve_split_share_ratio",
    "Share of requests routed to the candidate, by mode (split, shadow); 0 when off.",
    ["mode"],
    registry=SERVER_REGISTRY,
)
SERVE_PROMOTION_DECISIONS = Counter(
    "streamtrain_serve_promotion_decisions_total",
    "Decisions of the served-quality promotion policy: promote or rollback.",
    ["decision"],
    registry=SERVER_REGISTRY,
)
