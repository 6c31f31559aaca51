"""Settings -> a serving worker: weight slot, engine, verifier, snapshot source and cache,
prediction log, gRPC front end, app (``streamtrain serve``).

The builders turn settings into objects; :class:`~streamtrain.serve.server.ServingWorker` takes
the plain objects and runs them (its docstring gives the order of start and stop).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from streamtrain.config import ModelSettings, ServeSettings, Settings
from streamtrain.devices import resolve_device
from streamtrain.extras import MissingExtra
from streamtrain.kafka import KafkaConnection, RecordProducer, record_consumer, record_producer
from streamtrain.metrics import SERVER_REGISTRY
from streamtrain.quality.promotion import PromotionRule
from streamtrain.sample.spec import SampleSpec, spec_for_model
from streamtrain.serve.prediction_log.writer import PredictionLog
from streamtrain.serve.promotion import PromotionWatch
from streamtrain.serve.protocol.admin import AdminEndpoints
from streamtrain.serve.protocol.bodies import ModelIO
from streamtrain.serve.protocol.dataplane import ServedModel
from streamtrain.serve.protocol.rest import create_app
from streamtrain.serve.protocol.split import TrafficSplit, split_plan
from streamtrain.serve.server import ServingWorker
from streamtrain.serve.weights.inference import BatchingEngine, DirectEngine, Engine, head_for
from streamtrain.serve.weights.retained import RetainedVersions
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.unfilled import initial_draws_skipped
from streamtrain.serve.weights.watcher import SnapshotSource, SnapshotWatcher
from streamtrain.snapshot.cache import SnapshotCache
from streamtrain.snapshot.manifest import SnapshotHeader, settings_hash
from streamtrain.snapshot.signing import ManifestVerifier
from streamtrain.train.models import build_model
from streamtrain.train.row_tracker import row_sparse_buffers, row_sparse_parameters

if TYPE_CHECKING:
    from streamtrain.serve.protocol.grpc_service import GrpcServer

log = logging.getLogger(__name__)

EngineKind = Literal["auto", "direct", "batching"]


def build_slot(
    model: ModelSettings, device: torch.device, drain_timeout_s: float = 10.0
) -> WeightSlot:
    with initial_draws_skipped():  # a base overwrites them before anything is served
        built = build_model(model.name, spec_for_model(model), model.params).to(device)
    return WeightSlot(
        built,
        drain_timeout_s=drain_timeout_s,
        shared=frozenset(row_sparse_parameters(built)) | frozenset(row_sparse_buffers(built)),
    )


def build_engine(
    slot: WeightSlot,
    spec: SampleSpec,
    device: torch.device,
    max_batch_size: int,
    kind: EngineKind = "auto",
    max_batch_wait_s: float = 0.002,
) -> Engine:
    """``auto``: batch concurrent requests on CUDA; on CPU one pass per request measured faster
    (``bench/serve.py`` compares both)."""
    if kind == "auto":
        kind = "batching" if device.type == "cuda" and max_batch_size > 1 else "direct"
    if kind == "batching":
        return BatchingEngine(slot, head_for(spec), device, max_batch_size, max_batch_wait_s)
    return DirectEngine(slot, head_for(spec), device)


def build_verifier(serve: ServeSettings) -> ManifestVerifier:
    """Trusted keys and policy; a key configured with the policy ``off`` is logged loudly."""
    policy = serve.effective_signature_policy
    verifier = ManifestVerifier.from_files(list(serve.trusted_keys), policy)
    if policy == "require":
        log.info("snapshots must be signed by key %s", ", ".join(verifier.key_ids))
    elif serve.trusted_keys:
        log.warning(
            "signature_policy is off although trusted_keys are set: unsigned snapshots are "
            "accepted; remove signature_policy to require signatures"
        )
    return verifier


def build_source(
    settings: Settings,
    verifier: ManifestVerifier | None = None,
    live: Callable[[], SnapshotHeader | None] | None = None,
) -> SnapshotSource:
    """The snapshot topic's subscriber; ``live`` (the slot's live header) lets it skip bases
    the deltas already passed (``SnapshotSubscriber``)."""
    from streamtrain.snapshot.subscriber import SnapshotSubscriber

    return SnapshotSubscriber(
        kafka=KafkaConnection.from_settings(settings.kafka),
        topic=settings.topics.snapshots,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
        verifier=verifier if verifier is not None else build_verifier(settings.serve),
        live=live,
    )


def build_cache(settings: Settings, verifier: ManifestVerifier) -> SnapshotCache | None:
    serve = settings.serve
    if serve.cache_dir is None:
        return None
    return SnapshotCache(
        serve.cache_dir,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
        keep=serve.cache_keep,
        verifier=verifier,
    )


def build_prediction_log(settings: Settings, spec: SampleSpec) -> PredictionLog | None:
    """The prediction log when ``serve.prediction_log`` is on: an idempotent producer whose
    records fail after ``serve.prediction_log_timeout_s`` rather than wait unbounded."""
    serve = settings.serve
    if not serve.prediction_log:
        return None
    kafka = KafkaConnection.from_settings(settings.kafka)
    timeout_ms = int(serve.prediction_log_timeout_s * 1000)

    def producer() -> RecordProducer:
        return record_producer(kafka, acks="all", idempotent=True, delivery_timeout_ms=timeout_ms)

    return PredictionLog(
        spec=spec,
        topic=settings.topics.predictions,
        producer=producer,
        max_records=serve.prediction_log_queue,
        timeout_s=serve.prediction_log_timeout_s,
    )


def build_worker(settings: Settings, source: SnapshotSource | None = None) -> ServingWorker:
    """Everything ``streamtrain serve`` runs, from the settings tree."""
    serve = settings.serve
    # Modest intra-op threads leave cores to the event loop and the HTTP threads.
    torch.set_num_threads(serve.torch_threads or max(1, min(4, (os.cpu_count() or 2) // 2)))
    device = resolve_device(serve.device)
    spec = spec_for_model(settings.model)
    slot = build_slot(settings.model, device, serve.drain_timeout_s)
    runner = build_engine(
        slot, spec, device, serve.max_batch_size, serve.engine, serve.max_batch_wait_ms / 1000
    )
    verifier = build_verifier(serve)
    cache = build_cache(settings, verifier)
    with initial_draws_skipped():  # a retained version is loaded whole into it
        spare = build_model(settings.model.name, spec, settings.model.params).to(device)
    retained = RetainedVersions(
        slot,
        spare,
        head_for(spec),
        device,
        serve.retain_versions,
        pin_store=cache,
    )
    split = TrafficSplit(split_plan(serve), retained)
    served = ServedModel(
        slot=slot,
        engine=runner,
        io=ModelIO.for_spec(spec),
        name=serve.model_name,
        retained=retained,
        prediction_log=build_prediction_log(settings, spec),
        split=split,
    )
    app = create_app(
        served=served,
        max_body_bytes=serve.max_body_bytes,
        metrics_registry=SERVER_REGISTRY if serve.metrics_port is None else None,
        extra_routes=AdminEndpoints(retained, serve.admin_token, split).routes(),
    )
    watcher = SnapshotWatcher(
        source if source is not None else build_source(settings, verifier, _live_header(slot)),
        retained,
        cache=cache,
    )
    grpc = build_grpc(served, serve)
    try:
        return ServingWorker(
            app=app,
            served=served,
            watcher=watcher,
            host=serve.host,
            port=serve.port,
            metrics_port=serve.metrics_port,
            grpc=grpc,
            tls=_tls(serve),
            promotion=build_promotion(settings, split, retained, spec),
        )
    except BaseException:
        if grpc is not None:
            grpc.stop()  # its thread and bound port would outlive a worker that never ran
        raise


def _live_header(slot: WeightSlot) -> Callable[[], SnapshotHeader | None]:
    def live() -> SnapshotHeader | None:
        info = slot.info
        return None if info is None else info.header

    return live


def build_promotion(
    settings: Settings, split: TrafficSplit, retained: RetainedVersions, spec: SampleSpec
) -> PromotionWatch | None:
    """The served-quality promotion watch when ``serve.promotion`` is on."""
    serve = settings.serve
    if not serve.promotion:
        return None
    kafka = KafkaConnection.from_settings(settings.kafka)
    return PromotionWatch(
        split=split,
        retained=retained,
        spec=spec,
        rule=PromotionRule(
            serve.promotion_min_rows,
            serve.promotion_margin,
            serve.promotion_z,
            serve.promotion_test,
            serve.promotion_alpha,
            serve.promotion_tau,
        ),
        consumer=lambda topic: record_consumer(kafka, topic=topic),
        predictions=settings.topics.predictions,
        labels=settings.topics.labels,
        check_every_s=serve.promotion_check_s,
    )


def _tls(serve: ServeSettings) -> tuple[Path, Path] | None:
    if serve.tls_certfile is None or serve.tls_keyfile is None:
        return None
    return serve.tls_certfile, serve.tls_keyfile


def build_grpc(served: ServedModel, serve: ServeSettings) -> GrpcServer | None:
    """The gRPC front end when ``serve.grpc_port`` is set; a clear error when the optional
    ``grpc`` extra is not installed."""
    if serve.grpc_port is None:
        return None
    try:
        from streamtrain.serve.protocol.grpc_service import GrpcServer
    except ImportError as exc:
        raise MissingExtra("grpc", "serve.grpc_port", exc) from None
    return GrpcServer(
        served,
        serve.host,
        serve.grpc_port,
        max_message_bytes=serve.max_body_bytes,
        tls=_tls(serve),
    )
