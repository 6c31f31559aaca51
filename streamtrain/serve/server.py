"""A serving worker wired together: weight slot, engine, snapshot watcher, HTTP app, uvicorn.

:class:`ServingWorker` takes plain objects and runs them; ``streamtrain.builders.server`` builds
them from the settings. One uvicorn worker per process: scale out with replicas, each reading
the snapshot topic.

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

import asyncio
import logging
import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette

from streamtrain.metrics import SERVER_REGISTRY, serve_metrics
from streamtrain.serve.infer_protocol import infer_route_protocol
from streamtrain.serve.promotion import PromotionWatch
from streamtrain.serve.protocol.dataplane import ServedModel
from streamtrain.serve.protocol.infer_route import InferRoute
from streamtrain.serve.transport import OneWriteHttpToolsProtocol
from streamtrain.serve.weights.watcher import SnapshotWatcher

if TYPE_CHECKING:
    from streamtrain.serve.protocol.grpc_service import GrpcServer

log = logging.getLogger(__name__)


def _protocol(app: Starlette, http: str) -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` for the worker's ``http`` setting: ``infer-route`` answers infer
    requests from the data plane (serve/infer_protocol.py; an app without create_app's route
    gets ``one-write``), ``one-write`` is uvicorn's protocol with one send() per response
    (serve/transport.py), ``httptools`` and ``h11`` are uvicorn's own."""
    route = getattr(app.state, "infer_route", None)
    if http == "infer-route" and isinstance(route, InferRoute):
        return infer_route_protocol(route)
    if http in ("infer-route", "one-write"):
        return OneWriteHttpToolsProtocol
    return http


class ServingWorker:
    """Runs one serving process: ``run()`` blocks (CLI), ``start()``/``stop()`` use a thread.

    >>> from streamtrain.builders.server import build_worker  # doctest: +SKIP
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
        http: str = "infer-route",
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
                http=_protocol(app, http),
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
        A signal that comes before uvicorn has installed its own handlers (while the side
        servers and the event loop start) asks it to exit as soon as it has started: the
        handlers used to ignore it, and such a server ran on until it was killed.
        """
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            previous = {
                sig: signal.signal(sig, self._exit_when_started)
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
        self._start_side()
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _exit_when_started(self, signum: int, frame: object) -> None:
        self._server.should_exit = True

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
