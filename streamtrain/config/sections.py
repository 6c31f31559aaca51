"""The settings sections of the pipeline's inputs and the trainer: Kafka, topics, ingest,
model, optimizer, train (``Task`` and the frozen base every section shares live here too).

Part of :mod:`streamtrain.config`, which assembles them into the one settings tree; import
them from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

from streamtrain.ascii_int import parse_ascii_int

Task = Literal["multiclass", "binary", "regression"]


class _Frozen(BaseModel):
    # No setting means anything by inf or NaN (stop_when_idle: inf was taken as "never";
    # leave it null for that): a non-finite number is a typo or a unit slip, said at once.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _host_name(value: str) -> str:
    """A host to listen on must encode as a DNS name (IDNA): socket calls raise UnicodeError,
    not OSError, for bytes that are not text (a non-UTF-8 argument) or a label over 63
    characters, and that escaped the bind checks as a traceback."""
    try:
        value.encode("idna")
    except UnicodeError as exc:
        raise ValueError(
            f"{value[:80]!r} is not a host name or address ({exc}); write e.g. 127.0.0.1, "
            "0.0.0.0 (every interface) or a host name"
        ) from exc
    return value


Host = Annotated[str, AfterValidator(_host_name)]


class KafkaSettings(_Frozen):
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list, e.g. 'kafka:9092'."
    )
    client_id: str = "streamtrain"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None
    ) = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_kerberos_service_name: str = Field("kafka", description="GSSAPI only.")
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Low fetch wait keeps produce-to-train latency near 3 ms instead of ~130 ms (KAFKA_NOTES).
    fetch_max_wait_ms: int = Field(10, ge=0, le=60_000)
    producer_linger_ms: int = Field(
        5,
        ge=0,
        le=60_000,
        description="How long the service's own producers (prediction log, join output, dead "
        "letters) gather records into one batch. Snapshots are always sent at once.",
    )
    request_timeout_ms: int = Field(30_000, ge=1_000)
    client: Literal["auto", "kafka-python", "confluent"] = Field(
        "confluent",
        description="Client library of every Kafka client: 'confluent' (confluent-kafka/"
        "librdkafka, ~10x the records/s), 'kafka-python', or 'auto' (confluent when the "
        "confluent-kafka package imports, else kafka-python).",
    )
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Raw options of the chosen client library, passed through unchanged.",
    )
    connect_timeout_s: float = Field(
        30.0, gt=0, description="How long a call that must reach Kafka may try."
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            number = parse_ascii_int(port)
            if not sep or not host or number is None or number > 65535:
                raise ValueError(
                    f"bootstrap server {server!r} is not host:port; write e.g. '127.0.0.1:9092'"
                )
        return value


# Kafka's own rule for a topic name (kafka.common.internals.Topic): 1 to 249 of these
# characters, "." and ".." excluded. A name outside it failed late and misleadingly: an empty
# one as "cannot reach Kafka ... Bad message format", a name with a space or over 249
# characters as a trainer that waited for records forever.
KAFKA_TOPIC = r"^[A-Za-z0-9._-]{1,249}$"


def _not_dots(name: str) -> str:
    if name in (".", ".."):
        raise ValueError(f"{name!r} is not a topic name Kafka accepts")
    return name


TopicName = Annotated[str, Field(pattern=KAFKA_TOPIC), AfterValidator(_not_dots)]


class TopicSettings(_Frozen):
    samples: TopicName = "streamtrain.samples"
    dead_letter: TopicName = "streamtrain.samples.dlq"
    snapshots: TopicName = "streamtrain.snapshots"
    sample_partitions: int = Field(1, ge=1, description="Used only when streamtrain creates it.")
    # Delayed labels (docs/labels.md): what servers served, the labels that arrive later, and
    # the labels the join could not use. Both inputs must have the same partition count.
    predictions: TopicName = "streamtrain.predictions"
    labels: TopicName = "streamtrain.labels"
    labels_dead_letter: TopicName = "streamtrain.labels.dlq"


class IngestSettings(_Frozen):
    group_id: str = "streamtrain-trainer"
    partitions: tuple[int, ...] | None = Field(
        None, description="Partitions to read; None means every partition of the topic."
    )
    start_from: Literal["committed", "earliest", "latest"] = "committed"
    on_offset_reset: Literal["earliest", "latest", "fail"] = Field(
        "earliest",
        description="When a partition's log no longer holds the next offset or is another "
        "log (truncated, re-created topic): go on from its start, its end, or stop the trainer.",
    )
    max_batch_size: int = Field(256, ge=1, le=1_000_000)
    max_wait_ms: int = Field(50, ge=0, le=600_000)
    max_record_bytes: int = Field(1_048_576, ge=16)
    prefetch_batches: int = Field(4, ge=1, le=1024)
    deterministic_batches: bool = Field(
        True, description="Batches follow the log's order, so replays cut the same batches."
    )
    max_partition_idle_ms: int = Field(
        1000, ge=0, le=600_000, description="Longest wait for a partition with unfetched records."
    )
    # Issue 29: a declared codec reads no headers; JSON decoding in worker processes.
    codec: Literal["auto", "binary", "json"] = Field(
        "auto",
        description="How sample records are decoded: 'auto' by each record's content-type "
        "header, or every record as 'binary' or 'json' (no header is read; faster).",
    )
    decode_workers: int | Literal["auto"] = Field(
        "auto",
        description="Processes decoding JSON samples in parallel; 1 decodes in the trainer's "
        "ingest thread; 'auto' is 1 on a machine of 2 cores or fewer, else cores - 1 (at most 8).",
    )
    # Rejected records are loud (issue 22): a WARNING summary, and readiness when none is valid.
    reject_summary_every_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="Rejected records are summarised at WARNING at most this often "
        "(count by reason, one example); the first one at once.",
    )
    all_rejected_alarm_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="Records arriving this long with none valid fail /health/ready "
        "(condition `samples`) until a valid one comes.",
    )

    @field_validator("decode_workers")
    @classmethod
    def _check_decode_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError(f"decode_workers must be 'auto' or an integer 1 to 64, got {value}")
        return value


class SparseFeatureSettings(_Frozen):
    name: str = Field(min_length=1, description="Key of the feature under a sample's `sparse`.")
    table: str = Field("", description="Embedding table its IDs index; default: the name.")
    max_length: int = Field(64, ge=1, description="Most IDs one sample may carry for it.")


class ModelSettings(_Frozen):
    # `auto` (a linear and an MLP head mixed by Hedge) measured never worse than either alone:
    # docs/models.md, "Defaults and the evidence"
    name: str = Field("auto", description="Built-in name or a 'package.module:factory' path.")
    task: Task = "multiclass"
    input_shape: tuple[int, ...] = (16,)
    num_classes: int = Field(2, ge=2)
    target_dim: int = Field(1, ge=1, description="Outputs of a regression model.")
    loss: Literal["auto", "cross_entropy", "bce", "mse", "huber"] = "auto"
    params: dict[str, Any] = Field(default_factory=dict, description="Model hyperparameters.")
    sparse: tuple[SparseFeatureSettings, ...] = Field(
        (), description="Sparse ID features a sample may carry (docs/wire-format.md)."
    )

    @field_validator("input_shape")
    @classmethod
    def _check_shape(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(d < 1 for d in value):
            raise ValueError(f"input_shape {list(value)} needs positive dims, e.g. [16] or [1,8,8]")
        return value


class OptimizerSettings(_Frozen):
    name: Literal["sgd", "adam", "adamw", "adagrad", "rmsprop"] = "adam"
    lr: float = Field(1e-2, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "step", "inverse_sqrt"] = "constant"
    schedule_steps: int = Field(10_000, ge=1, description="Period of cosine / step schedules.")
    warmup_steps: int = Field(0, ge=0)
    clip_grad_norm: float | None = Field(None, gt=0)
    step_samples: int | Literal["auto", "batch"] = Field(
        "auto",
        description="Samples per optimizer step: 'batch' one step per fetched batch, an "
        "integer k steps of at most k samples, 'auto' one sample per step at first, the "
        "limit doubling every 256 steps, the learning rate scaled with the step's samples "
        "(train/step_size.py).",
    )

    @field_validator("step_samples")
    @classmethod
    def _check_step_samples(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(
                f"step_samples must be 'auto', 'batch' or an integer >= 1, got {value}"
            )
        return value


class TrainSettings(_Frozen):
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    autocast: Literal["off", "bf16", "fp16"] = "off"
    seed: int = 0
    checkpoint_dir: Path = Path("checkpoints")
    checkpoint_every_steps: int = Field(500, ge=1)
    checkpoint_every_seconds: float = Field(30.0, gt=0)
    keep_checkpoints: int = Field(3, ge=1)
    snapshot_every_steps: int = Field(50, ge=1)
    snapshot_every_seconds: float = Field(2.0, gt=0)
    delta_snapshots: bool = Field(
        True, description="Publish changed rows of row-sparse parameters between bases."
    )
    base_every_deltas: int = Field(20, ge=0, description="Deltas between two full bases.")
    base_every_seconds: float = Field(60.0, gt=0, description="Longest time between bases.")
    max_bad_steps: int = Field(3, ge=1, description="Consecutive non-finite steps before rollback.")
    metric_window: int = Field(1000, ge=1, description="Samples in the rolling loss/accuracy.")
    promotion_tolerance: float | None = Field(
        None,
        ge=0,
        description="Hold a snapshot whose prequential loss exceeds the last published one's "
        "by more than this fraction; None publishes every snapshot.",
    )
    drift_detector: Literal["adwin", "page_hinkley"] | None = Field(
        None, description="River drift detector on the prequential loss (streamtrain[drift])."
    )
    max_samples: int | None = Field(None, ge=1)
    stop_when_idle: float | None = Field(None, gt=0, description="Seconds without input.")
    metrics_port: int = Field(9100, ge=0, le=65535)
    metrics_host: Host = Field(
        "127.0.0.1", description="Address of /metrics and /health; 0.0.0.0 = every interface."
    )
    liveness_timeout_s: float = Field(
        60.0, gt=0, description="/health/live fails once the loop has not beaten this long."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; None = every core but one."
    )
    signing_key: Path | None = Field(
        None, description="Ed25519 private key (PEM) that signs every snapshot manifest."
    )
