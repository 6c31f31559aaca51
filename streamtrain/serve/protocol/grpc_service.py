"""The KServe v2 / Triton ``GRPCInferenceService`` on its own port, sharing the REST path's model.

Built on the message and servicer classes ``tritonclient[grpc]`` ships (``service_pb2``,
``service_pb2_grpc``), so ``tritonclient.grpc`` and KServe's gRPC clients work unmodified.
Methods this server has no use for (shared memory, repository load/unload, trace and log
settings) keep the base servicer's ``UNIMPLEMENTED``.

Lifecycle (:class:`GrpcServer`):

1. the constructor binds the port (so a port in use fails ``streamtrain serve`` before it
   starts anything) on an event loop of its own thread, so a slow gRPC client never holds up
   uvicorn's loop (the engine is shared and thread-safe); ``start()`` starts serving;
2. every call goes through the same :class:`~streamtrain.serve.protocol.dataplane.ServedModel` as
   REST: same name and version checks, same engine, same ``streamtrain_serve_requests_total``;
3. ``stop()`` stops accepting, lets calls in flight finish within the grace period, then ends
   the thread. It runs before the engine is closed.

Errors map to gRPC status codes: 400 → ``INVALID_ARGUMENT``, 404 → ``NOT_FOUND``, 413 →
``RESOURCE_EXHAUSTED``, 503 → ``UNAVAILABLE``, anything unexpected → ``INTERNAL`` (logged).
Bytes that are not the method's message are ``INVALID_ARGUMENT`` too (``grpc_guard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from streamtrain.serve.protocol.bodies import InferRequest, ProtocolError
from streamtrain.serve.protocol.dataplane import (
    ServedModel,
    load_unload_refused,
    server_metadata,
)
from streamtrain.serve.protocol.grpc_guard import Undecodable, add_guarded
from streamtrain.serve.protocol.grpc_tensors import encode_grpc_response, parse_grpc_request
from streamtrain.serve.weights.inference import Array

_T = TypeVar("_T")

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
_Context = Any  # grpc.aio.ServicerContext; grpcio ships no type information


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """One method per KServe v2 gRPC call, over the shared :class:`ServedModel`."""

    def __init__(self, served: ServedModel) -> None:
        self._served = served
        meta = server_metadata()
        self._server_metadata = service_pb2.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: _Context
    ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: _Context
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self._served.slot.ready)

    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: _Context
    ) -> service_pb2.ModelReadyResponse:
        # Triton answers ready=false, not NOT_FOUND, for an unknown model or version, as REST's
        # /ready does; a client's is_model_ready("nosuch") returns False rather than raising.
        try:
            self._served.live_version(request.name, request.version)
        except ProtocolError:  # unknown model or version (404), no weights yet (503)
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: _Context
    ) -> service_pb2.ServerMetadataResponse:
        return self._server_metadata

    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: _Context
    ) -> service_pb2.ModelMetadataResponse:
        async with _aborting(context):
            live = self._served.live_version(request.name, request.version)
        meta = self._served.metadata(live)
        return service_pb2.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[
                service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]
            ],
        )

    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: _Context
    ) -> service_pb2.ModelConfigResponse:
        async with _aborting(context):
            config = self._served.config(request.name, request.version)
        return json_format.ParseDict({"config": config}, service_pb2.ModelConfigResponse())

    async def ModelStatistics(
        self, request: service_pb2.ModelStatisticsRequest, context: _Context
    ) -> service_pb2.ModelStatisticsResponse:
        async with _aborting(context):
            stats = self._served.statistics(request.name, request.version)
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: _Context
    ) -> service_pb2.RepositoryIndexResponse:
        models = self._served.index(request.ready)
        return json_format.ParseDict({"models": models}, service_pb2.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request: Any, context: _Context) -> None:
        refused = load_unload_refused("load", request.model_name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, refused)

    async def RepositoryModelUnload(self, request: Any, context: _Context) -> None:
        refused = load_unload_refused("unload", request.model_name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, refused)

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: _Context
    ) -> service_pb2.ModelInferResponse:
        try:
            return await self._infer(request)
        except ProtocolError as exc:  # not ``_aborting``: its context manager costs every call
            await context.abort(_code(exc), str(exc))
            raise  # not reached: abort raises

    async def ModelStreamInfer(
        self,
        requests: AsyncIterator[service_pb2.ModelInferRequest | Undecodable],
        context: _Context,
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Triton's bidirectional stream: one answer per request, in the order sent. A request
        that fails is answered with ``error_message`` set (and its id echoed), as Triton does,
        and the stream goes on."""
        async for request in requests:
            if isinstance(request, Undecodable):
                yield _stream_error(request.message("ModelStreamInfer"), None)
                continue
            try:
                reply = await self._infer(request)
            except ProtocolError as exc:
                yield _stream_error(str(exc), request)
            else:
                yield service_pb2.ModelStreamInferResponse(infer_response=reply)

    async def _infer(
        self, request: service_pb2.ModelInferRequest
    ) -> service_pb2.ModelInferResponse:
        served = self._served

        async def decode() -> InferRequest:
            return parse_grpc_request(request, served.io)

        def encode(
            version: str, parsed: InferRequest, outputs: Mapping[str, Array]
        ) -> service_pb2.ModelInferResponse:
            return encode_grpc_response(served.name, version, parsed, outputs, served.io)

        return await served.infer(request.model_name, request.model_version, decode, encode)


def _code(exc: ProtocolError) -> grpc.StatusCode:
    return _STATUS.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT)


def _stream_error(
    message: str, request: service_pb2.ModelInferRequest | None
) -> service_pb2.ModelStreamInferResponse:
    """A failed stream request's answer: Triton's ``error_message``, and an ``infer_response``
    carrying the request's id, model name and version so the client can tell which failed."""
    reply = service_pb2.ModelStreamInferResponse(error_message=message)
    if request is not None:
        answer = reply.infer_response
        answer.id, answer.model_name = request.id, request.model_name
        answer.model_version = request.model_version
    return reply


@contextlib.asynccontextmanager
async def _aborting(context: _Context) -> AsyncIterator[None]:
    """The one error mapping of every method: a ProtocolError ends the call with the status
    code matching its HTTP status (``context.abort`` raises, so nothing after it runs)."""
    try:
        yield
    except ProtocolError as exc:
        await context.abort(_code(exc), str(exc))


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (a dependency on every platform but Windows), as uvicorn's loop:
    the gRPC thread's loop runs several callbacks and tasks per call, and asyncio's own loop
    spends measurably more CPU on them (bench/README.md, Serve, gRPC)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class GrpcServer:
    """A ``grpc.aio`` server on its own thread and event loop.

    >>> server = GrpcServer(served, "127.0.0.1", 0, max_message_bytes=1 << 20)  # doctest: +SKIP
    >>> server.start()  # doctest: +SKIP
    >>> server.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        served: ServedModel,
        host: str,
        port: int,
        *,
        max_message_bytes: int,
        grace_s: float = 10.0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self._host = host
        self._grace_s = grace_s
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc", daemon=True)
        self._thread.start()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            credentials = None
            if tls is not None:
                credentials = grpc.ssl_server_credentials(
                    [(tls[1].read_bytes(), tls[0].read_bytes())]
                )
            self._server, self.port = self._call(
                self._bind(served, address, max_message_bytes, credentials)
            )
        except BaseException:
            self._end_loop()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, _T], timeout_s: float = 10.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    @staticmethod
    async def _bind(
        served: ServedModel, address: str, limit: int, credentials: Any
    ) -> tuple[Any, int]:
        server = grpc.aio.server(
            options=[
                # A request over the limit is refused by gRPC before it is held in memory.
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
            ],
        )
        add_guarded(
            service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            InferenceServicer(served),
            server,
        )
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot bind the gRPC port {address}; choose a free serve.grpc_port")
        return server, int(port)

    @property
    def target(self) -> str:
        """``host:port`` for ``tritonclient.grpc.InferenceServerClient(url=...)``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    def start(self) -> str:
        """Start serving; returns the target."""
        self._call(self._server.start())
        return self.target

    def stop(self) -> None:
        """Finish calls in flight (within the grace period) and end the thread; idempotent."""
        if self._loop.is_closed():
            return
        self._call(self._server.stop(self._grace_s), self._grace_s + 5)
        self._end_loop()

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._grace_s)
        self._loop.close()
