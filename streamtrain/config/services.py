"""The settings sections of the long-running services beside the trainer: serve (the
hot-swapping model server) and join (delayed labels to logged predictions).

Part of :mod:`streamtrain.config`, which assembles them into the one settings tree; import
them from there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    model_validator,
)

from streamtrain.config.sections import Host, _Frozen


class ServeSettings(_Frozen):
    host: Host = "127.0.0.1"
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
    # --- traffic split and shadow (serve/protocol/split.py, docs/serving.md) ---
    split_candidate: str | None = Field(
        None,
        description="Candidate of a traffic split: a retained version, or 'newest' (the newest "
        "retained one while a pin holds it back); None serves everything live.",
    )
    split_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of requests (by request-id hash) the candidate gets.",
    )
    split_mode: Literal["split", "shadow"] = Field(
        "split",
        description="split: the candidate answers its share; shadow: computed, logged only.",
    )
    promotion: bool = Field(
        False,
        description="Promote or roll back the split's candidate by served quality "
        "(reads topics.predictions and topics.labels; needs prediction_log).",
    )
    promotion_min_rows: int = Field(
        500, ge=1, description="Labelled rows each arm needs before a promotion decision."
    )
    promotion_margin: float = Field(
        0.0, ge=0.0, description="Mean per-row loss difference a decision must exceed."
    )
    promotion_z: float = Field(
        3.0,
        gt=0.0,
        description="promotion_test welch: one-sided z the difference less the margin must reach.",
    )
    promotion_test: Literal["msprt", "welch"] = Field(
        "msprt",
        description="msprt: always-valid mixture SPRT (its alpha holds under repeated looks); "
        "welch: a fixed z, whose error rate climbs with every look.",
    )
    promotion_alpha: float = Field(
        0.01, gt=0.0, lt=1.0, description="msprt: error rate per direction over all looks."
    )
    promotion_tau: float = Field(
        0.1, gt=0.0, description="msprt: mixture scale, in per-row loss standard deviations."
    )
    promotion_check_s: float = Field(
        2.0, gt=0.0, le=3600, description="Seconds between promotion checks."
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
    def _promotion_reads_the_log(self) -> ServeSettings:
        if self.promotion and not self.prediction_log:
            raise ValueError(
                "serve.promotion judges the rows the prediction log writes: set "
                "serve.prediction_log true as well, or serve.promotion false"
            )
        return self

    @model_validator(mode="after")
    def _token_fits_a_header(self) -> ServeSettings:
        """A client sends the token in an HTTP header, which carries visible ASCII only: with
        any other character no request could ever match it (nor could ``streamtrain admin``
        send it)."""
        token = self.admin_token.get_secret_value() if self.admin_token is not None else None
        if token is not None and not re.fullmatch(r"[!-~]+", token):
            raise ValueError(
                "serve.admin_token must be printable ASCII without spaces (it travels in an "
                "HTTP header); generate one with e.g. `openssl rand -hex 32`"
            )
        return self

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
    # --- served quality (streamtrain.quality, docs/labels.md) ---
    quality: bool = Field(
        True, description="Score served rows against their labels per model version and arm."
    )
    quality_versions: int = Field(
        4,
        ge=1,
        le=64,
        description="Versions with their own quality series; older ones are 'older'.",
    )
    quality_window_s: float = Field(
        300.0, gt=0, description="Event-time window (served_at) of the window_* quality gauges."
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
    metrics_host: Host = Field(
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
