"""A serving worker wired together: weight slot, engine, snapshot watcher, HTTP app, uvicorn.

The builders turn settings into objects; :class:`ServingWorker` takes plain objects and runs
them. One uvicorn worker per process: scale out with replicas, each reading the snapshot topic.

Order of start and stop:

1. the HTTP socket is bound first, so ``/v2/health/live`` answers at once and
   ``/v2/health/ready`` says 503 until the watcher has swapped in the first snapshot
   (readiness means "holds valid weights", never "reached Kafka");
2. the gRPC port (``serve.grpc_port``, if set) is bound and served from its own thread;
3. the watcher thread starts, loads the newest valid snapshot of the local cache (if any),
   then the newest valid one on the topic, retrying with backoff while Kafka is unreachable;
4. on SIGTERM/SIGINT uvicorn stops accepting, finishes the requests in flight, then the
   gRPC server (finishing its calls in flight), the prediction log (``serve.prediction_log``:
   flushing what the front ends handed it, within ``serve.prediction_log_timeout_s``), the
   watcher, the engine and the separate metrics server (if any) are stopped in that order.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import uvicorn
from starlette.applications import Starlette

from streamtrain.config import ModelSettings, ServeSettings, Settings
from streamtrain.devices import resolve_device
from streamtrain.extras import MissingExtra
from streamtrain.kafka import KafkaConnection, RecordProducer, record_producer
from streamtrain.metrics import SERVER_REGISTRY, serve_metrics
from streamtrain.serve.prediction_log.writer import PredictionLog
from streamtrain.serve.promotion import PromotionWatch, build_promotion
from streamtrain.serve.protocol.admin import AdminEndpoints
from streamtrain.serve.protocol.bodies import ModelIO
from streamtrain.serve.protocol.dataplane import ServedModel
from streamtrain.serve.protocol.rest import create_app
from streamtrain.serve.protocol.split import TrafficSplit, split_plan
from streamtrain.serve.weights.inference import BatchingEngine, DirectEngine, Engine, head_for
from streamtrain.serve.weights.retained import RetainedVersions
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import SnapshotSource, SnapshotWatcher
from streamtrain.snapshot.cache import SnapshotCache
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.signing import ManifestVerifier
from streamtrain.spec import SampleSpec, spec_for_model
from streamtrain.train.models import build_model
from streamtrain.train.row_tracker import row_sparse_buffers, row_sparse_parameters

if TYPE_CHECKING:
    from streamtrain.serve.protocol.grpc_service import GrpcServer

log = logging.getLogger(__name__)

EngineKind = Literal["auto", "direct", "batching"]


def build_slot(
    model: ModelSettings, device: torch.device, drain_timeout_s: float = 10.0
) -> WeightSlot:
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


def build_source(settings: Settings, verifier: ManifestVerifier | None = None) -> SnapshotSource:
    from streamtrain.snapshot.subscriber import SnapshotSubscriber

    return SnapshotSubscriber(
        kafka=KafkaConnection.from_settings(settings.kafka),
        topic=settings.topics.snapshots,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
        verifier=verifier if verifier is not None else build_verifier(settings.serve),
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
        return record_producer(
            kafka, acks="all", idempotent=True, delivery_timeout_ms=timeout_ms, linger_ms=5
        )

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
    retained = RetainedVersions(
        slot,
        build_model(settings.model.name, spec, settings.model.params).to(device),
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
        source if source is not None else build_source(settings, verifier),
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


class ServingWorker:
    """Runs one serving process: ``run()`` blocks (CLI), ``start()``/``stop()`` use a thread.

    >>> worker = build_worker(settings)  # doctest: +SKIP
    >>> url = worker.start()  # doctest: +SKIP
    >>> worker.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        app: Starlette,
        served: ServedModel,
        watcher: SnapshotWatcher,
        host: str,
        port: int,
        metrics_port: int | None = None,
        grpc: GrpcServer | None = None,
        tls: tuple[Path, Path] | None = None,
        promotion: PromotionWatch | None = None,
    ) -> None:
        self.app = app
        self.grpc = grpc
        self.prediction_log = served.prediction_log
        self.slot = served.slot
        self._engine = served.engine
        self._watcher = watcher
        self._promotion = promotion
        self._metrics_port = metrics_port
        self._metrics_server: Any = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Naming IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto is
        # IPPROTO_TCP, and without it every response waits ~40 ms on the client's delayed ACK.
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        # Listening now means clients that connect before uvicorn runs wait in the backlog.
        self._socket.listen(2048)
        self._host = host
        self.port = int(self._socket.getsockname()[1])
        self._scheme = "http" if tls is None else "https"
        certfile, keyfile = (None, None) if tls is None else tls
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=10,
                ssl_certfile=certfile,
                ssl_keyfile=keyfile,
            )
        )
        if tls is not None:
            try:
                # Loads the certificate and key now: a bad pair fails `serve` at start, as a
                # port in use does, rather than in uvicorn's thread.
                self._server.config.load()
            except OSError:
                self._socket.close()
                raise
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{self._scheme}://{host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        if self._metrics_port is None:
            return f"{self.url}/metrics"
        port = (
            self._metrics_port if self._metrics_server is None else self._metrics_server.server_port
        )
        return f"http://{self._host}:{port}/metrics"

    def _start_side(self) -> None:
        if self._metrics_port is not None:
            self._metrics_server = serve_metrics(SERVER_REGISTRY, self._metrics_port, self._host)
        if self.prediction_log is not None:
            self.prediction_log.start()
        if self._promotion is not None:
            self._promotion.start()
        if self.grpc is not None:
            self.grpc.start()
        self._watcher.start()

    def run(self) -> None:
        """Serve in the foreground until SIGTERM/SIGINT, then shut down gracefully.

        uvicorn catches the signal, drains the requests in flight, restores the previous
        handlers and raises the signal again; the handlers installed here absorb that, so the
        watcher and engine are closed and the process exits 0 instead of dying by the signal.
        """
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            previous = {
                sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)
            }
        self._start_side()
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self, timeout_s: float = 10.0) -> str:
        """Serve from a background thread; returns the base URL once it accepts requests."""
        self._start_side()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="uvicorn"
        )
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout_s / 0.01)):
            if self._server.started or not self._thread.is_alive():
                break
            deadline.wait(0.01)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"the HTTP server did not start within {timeout_s} s")
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._close()

    def _close(self) -> None:
        if self.grpc is not None:
            self.grpc.stop()
        if self._promotion is not None:
            self._promotion.stop()
        if self.prediction_log is not None:
            self.prediction_log.close()
        self._watcher.stop()
        self._engine.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        self._socket.close()
