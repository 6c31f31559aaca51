"""One frozen settings tree for every streamtrain process.

Sources, lowest priority first: defaults, a YAML file (``--config path``), environment variables
(``STREAMTRAIN_`` prefix, ``__`` between nested names, e.g.
``STREAMTRAIN_KAFKA__BOOTSTRAP_SERVERS=kafka:9092``), then CLI flags. Classes inside the package
never see this tree: ``streamtrain.cli`` turns it into plain typed arguments.

>>> settings = load_settings(overrides={"model": {"input_shape": [8]}})
>>> settings.model.input_shape
(8,)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.config_report import ConfigError as ConfigError  # re-exported
from streamtrain.config_report import (
    SettingsSources,
    describe_problems,
    read_yaml_file,
    unknown_variables,
)

Task = Literal["multiclass", "binary", "regression"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class TopicSettings(_Frozen):
    samples: str = "streamtrain.samples"
    dead_letter: str = "streamtrain.samples.dlq"
    snapshots: str = "streamtrain.snapshots"
    sample_partitions: int = Field(1, ge=1, description="Used only when streamtrain creates it.")
    # Delayed labels (docs/labels.md): what servers served, the labels that arrive later, and
    # the labels the join could not use. Both inputs must have the same partition count.
    predictions: str = "streamtrain.predictions"
    labels: str = "streamtrain.labels"
    labels_dead_letter: str = "streamtrain.labels.dlq"


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
        "limit doubling every 256 steps (train/step_size.py).",
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
    metrics_host: str = Field(
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


class ServeSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model_name: str = Field("streamtrain", pattern=r"^[A-Za-z0-9_.-]+$")
    max_body_bytes: int = Field(8 * 1_048_576, ge=1024)
    max_batch_size: int = Field(64, ge=1)
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    engine: Literal["auto", "direct", "batching"] = Field(
        "auto", description="auto batches concurrent requests on CUDA, one pass each on CPU."
    )
    max_batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="How long a request waits for others to share a pass."
    )
    drain_timeout_s: float = Field(
        10.0, gt=0, description="How long a swap waits for requests still on the standby copy."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads; None = half the cores, at most 4."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="None serves /metrics on the HTTP port itself."
    )
    trusted_keys: tuple[Path, ...] = Field(
        (), description="Ed25519 public keys (PEM); a snapshot must be signed by one of them."
    )
    signature_policy: Literal["require", "off"] | None = Field(
        None, description="None: require when trusted_keys is set, else off."
    )
    cache_dir: Path | None = Field(
        None, description="Local copy of the live snapshots; serves while Kafka is down."
    )
    cache_keep: int = Field(2, ge=1, le=16, description="Snapshots the local cache keeps.")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="KServe v2 gRPC port (needs streamtrain[grpc]); None serves no gRPC.",
    )
    retain_versions: int = Field(
        2, ge=1, le=16, description="Newest verified versions kept in memory (pin, rollback)."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin API (pin, rollback); None disables it."
    )
    tls_certfile: Path | None = Field(
        None, description="PEM certificate (chain) for HTTPS and gRPC over TLS; needs tls_keyfile."
    )
    tls_keyfile: Path | None = Field(None, description="PEM private key of tls_certfile.")
    prediction_log: bool = Field(
        False, description="Log every served sample to topics.predictions (docs/serving.md)."
    )
    prediction_log_queue: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="Log records held (waiting or unacknowledged) before new ones are dropped.",
    )
    prediction_log_timeout_s: float = Field(
        10.0,
        ge=0.1,
        le=3600,
        description="A log record unacknowledged this long, retries included, is dropped; "
        "also bounds the flush at shutdown.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError(
                "serve.tls_certfile and serve.tls_keyfile go together: set both for TLS, or "
                "neither for plain HTTP and gRPC"
            )
        return self

    @model_validator(mode="after")
    def _keys_for_require(self) -> ServeSettings:
        if self.signature_policy == "require" and not self.trusted_keys:
            raise ValueError(
                "signature_policy 'require' needs at least one public key in trusted_keys "
                "(create a pair with `streamtrain keys generate`)"
            )
        return self

    @property
    def effective_signature_policy(self) -> Literal["require", "off"]:
        """``require`` whenever a key is trusted, unless ``off`` is set explicitly."""
        if self.signature_policy is not None:
            return self.signature_policy
        return "require" if self.trusted_keys else "off"


class JoinSettings(_Frozen):
    """The streaming join of delayed labels to logged predictions (``streamtrain join``)."""

    window_s: float = Field(
        60.0, gt=0, description="How long a prediction waits for its label, from served_at."
    )
    on_expired: Literal["drop", "default_label"] = Field(
        "drop",
        description="A prediction whose label did not come in time: dropped, or "
        "emitted with default_label (implicit negative feedback).",
    )
    default_label: int | float | tuple[float, ...] | None = Field(
        None, description="Label of expired predictions when on_expired is default_label."
    )
    default_weight: float = Field(1.0, ge=0, description="Weight of default-label samples.")
    label_wait_s: float = Field(
        5.0,
        ge=0,
        description="How far past a label's timestamp the prediction log is read "
        "before a label with no prediction is dead-lettered as unknown_id.",
    )
    remember_s: float = Field(
        600.0,
        ge=0,
        description="How long past its window a resolved id is remembered, so a "
        "later label is dead-lettered as late or duplicate rather than unknown_id.",
    )
    max_pending_predictions: int = Field(
        200_000,
        ge=1,
        description="Pending predictions per partition; the oldest beyond it "
        "is expired early by the policy.",
    )
    max_pending_labels: int = Field(
        100_000, ge=1, description="Labels waiting for their prediction, per partition."
    )
    max_remembered_ids: int = Field(
        1_000_000,
        ge=1,
        description="Resolved ids remembered per partition (remember_s); "
        "the oldest beyond it are forgotten early.",
    )
    state_dir: Path = Field(
        Path("join-state"), description="Checkpoints of per-partition state; shared by replicas."
    )
    checkpoint_every_s: float = Field(2.0, gt=0, description="Seconds between checkpoints.")
    on_log_lost: Literal["earliest", "fail"] = Field(
        "earliest",
        description="When Kafka no longer holds the samples the checkpoints saw (emptied "
        "broker, re-created topic): start over from the inputs' start, or stop (exit 6); "
        "when an input partition was replaced: read it again from its start, or stop.",
    )
    group_id: str = Field("streamtrain-join", min_length=1)
    session_timeout_ms: int = Field(
        6000,
        ge=1000,
        le=300_000,
        description="Group session timeout: how soon a dead "
        "replica's partitions move to the others.",
    )
    metrics_port: int = Field(9102, ge=0, le=65535)
    metrics_host: str = Field(
        "127.0.0.1", description="Address of /metrics and /health; 0.0.0.0 = every interface."
    )
    liveness_timeout_s: float = Field(
        60.0, gt=0, description="/health/live fails once the loop has not beaten this long."
    )

    @model_validator(mode="after")
    def _default_label_for_policy(self) -> JoinSettings:
        if self.on_expired == "default_label" and self.default_label is None:
            raise ValueError(
                "join.on_expired 'default_label' needs join.default_label (e.g. 0 for "
                "'no click within the window')"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMTRAIN_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    ingest: IngestSettings = IngestSettings()
    model: ModelSettings = ModelSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    train: TrainSettings = TrainSettings()
    serve: ServeSettings = ServeSettings()
    join: JoinSettings = JoinSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)


class _YamlSource(PydanticBaseSettingsSource):
    data: dict[str, Any] = {}  # noqa: RUF012  (set by load_settings around one build)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _YamlSource.data


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings tree; raise ConfigError with one line per bad field.

    ``flags`` maps a dotted field (``kafka.bootstrap_servers``) to the CLI flag that set it in
    ``overrides``, so an error names the flag rather than the variable.
    """
    data, text = read_yaml_file(config_file) if config_file is not None else ({}, "")
    _YamlSource.data = data
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        sources = SettingsSources(
            flags=flags or {},
            environ=dict(os.environ),
            overrides=overrides or {},
            config_file=config_file,
            yaml_text=text,
        )
        raise ConfigError(describe_problems(exc, sources, Settings)) from exc
    finally:
        _YamlSource.data = {}


def unknown_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``STREAMTRAIN_*`` variable that sets nothing, naming the nearest valid
    variable (``STREAMTRAIN_MODLE__NAME``: did you mean ``STREAMTRAIN_MODEL__NAME``?)."""
    return unknown_variables(os.environ if environ is None else environ, Settings)
