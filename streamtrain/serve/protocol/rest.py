"""The HTTP face of a serving worker: Open Inference Protocol (KServe v2) REST routes.

:class:`V2Endpoints` holds one method per endpoint and :meth:`V2Endpoints.routes` is the route
table (versioned paths point at the same method), in the manner of KServe's ``V2Endpoints``.
The app is plain Starlette: no per-request dependency solving or model validation, bodies are
parsed by the typed decoder in :mod:`streamtrain.serve.protocol.bodies`.

Status codes: 400 bad request, 404 unknown model / version / route, 405 wrong method, 413 body
over ``max_body_bytes``, 503 no weights yet, 500 an unexpected failure (logged); the
transport answers 431 for a request line and headers over 64 KiB and 400 for a head the HTTP
parser refuses (:mod:`streamtrain.serve.transport`). Every error body is
``{"error": "<what was wrong and how to fix it>"}``. Each infer request is counted once in
``streamtrain_serve_requests_total`` by outcome; a client that hangs up before its body
arrived is ``client_disconnected``, never ``error``.

>>> from streamtrain.serve.protocol.bodies import ModelIO
>>> from streamtrain.serve.weights.inference import DirectEngine, head_for
>>> from streamtrain.serve.weights.slot import WeightSlot
>>> from streamtrain.sample.spec import SampleSpec
>>> import torch
>>> slot = WeightSlot(torch.nn.Linear(2, 1))
>>> io_spec = SampleSpec((2,), "regression")
>>> served = ServedModel(
...     slot=slot, engine=DirectEngine(slot, head_for(io_spec), torch.device("cpu")),
...     io=ModelIO.for_spec(io_spec), name="demo",
... )
>>> app = create_app(served=served, max_body_bytes=1 << 20)
"""

from __future__ import annotations

from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, make_asgi_app
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.serve.protocol.bodies import BINARY_HEADER, ProtocolError, encode_json
from streamtrain.serve.protocol.dataplane import (
    ServedModel,
    load_unload_refused,
    server_metadata,
)
from streamtrain.serve.protocol.infer_route import InferBody, InferRoute, decompress, too_large

_JSON = "application/json"


class _IndexRequest(msgspec.Struct):
    ready: bool = False
    repository_name: str | None = None


_INDEX_DECODER = msgspec.json.Decoder(_IndexRequest)


def _json(document: Any, status: int = 200) -> Response:
    return Response(encode_json(document), status_code=status, media_type=_JSON)


def error_response(status: int, message: str) -> Response:
    return _json({"error": message}, status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes before reading more than that, and
    inflated if it came compressed (:func:`decompress`)."""
    body = await _read_raw_body(request, limit)
    return decompress(body, request.headers.get("content-encoding"), limit)


async def _read_raw_body(request: Request, limit: int) -> bytes:
    declared = parse_ascii_int(request.headers.get("content-length") or "")
    if declared is not None and declared > limit:
        raise too_large(declared, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class V2Endpoints:
    """The OIP v2 REST endpoints of one served model, one method per endpoint."""

    def __init__(self, *, served: ServedModel, max_body_bytes: int) -> None:
        self._served = served
        self._slot = served.slot
        self._io = served.io
        self._model_name = served.name
        self._max_body_bytes = max_body_bytes
        self._server_metadata = encode_json(server_metadata())
        # The infer endpoint, shared with the worker's fast protocol (serve/infer_protocol.py).
        self.route = InferRoute(served, max_body_bytes)

    def routes(self) -> list[BaseRoute]:
        # Matched in order: the hot route first.
        return [
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.infer, methods=["POST"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            # Before "/v2/models/{name}", which would take "stats" for a model name.
            Route("/v2/models/stats", self.statistics, methods=["GET"]),
            Route("/v2/models/{name}", self.model_metadata, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}", self.model_metadata, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/config", self.model_config, methods=["GET"]),
            Route(
                "/v2/models/{name}/versions/{version}/config", self.model_config, methods=["GET"]
            ),
            Route("/v2/models/{name}/stats", self.statistics, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/stats", self.statistics, methods=["GET"]),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.repository_control, methods=["POST"]),
            Route("/v2/repository/models/{name}/unload", self.repository_control, methods=["POST"]),
        ]

    async def repository_control(self, request: Request) -> Response:
        action = request.url.path.rsplit("/", 1)[1]
        return error_response(400, load_unload_refused(action, request.path_params["name"]))

    async def server_metadata(self, request: Request) -> Response:
        return Response(self._server_metadata, media_type=_JSON)

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        if not self._slot.ready:
            return error_response(503, "not ready: waiting for the first valid weight snapshot")
        return _json({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        try:
            live = self._check_model(request)
        except ProtocolError as exc:
            return error_response(exc.status, str(exc))
        return _json(self._served.metadata(live))

    async def model_ready(self, request: Request) -> Response:
        try:
            self._check_model(request)
        except ProtocolError as exc:
            return error_response(exc.status, str(exc))
        return _json({"name": self._model_name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        try:
            return _json(
                self._served.config(request.path_params["name"], request.path_params.get("version"))
            )
        except ProtocolError as exc:
            return error_response(exc.status, str(exc))

    async def statistics(self, request: Request) -> Response:
        try:
            return _json(
                self._served.statistics(
                    request.path_params.get("name"), request.path_params.get("version")
                )
            )
        except ProtocolError as exc:
            return error_response(exc.status, str(exc))

    async def repository_index(self, request: Request) -> Response:
        """``{"ready": true}`` lists only versions ready to answer; an empty body lists all."""
        try:
            body = await read_body(request, self._max_body_bytes)
            query = _INDEX_DECODER.decode(body) if body.strip() else _IndexRequest()
        except ProtocolError as exc:
            return error_response(exc.status, str(exc))
        except msgspec.DecodeError as exc:
            return error_response(
                400, f'repository index body must be {{"ready": true|false}}: {exc}'
            )
        except ClientDisconnect:
            return error_response(400, "client disconnected before the request body was complete")
        return _json(self._served.index(query.ready))

    async def infer(self, request: Request) -> Response:
        async def arrived() -> InferBody:
            try:
                body = await _read_raw_body(request, self._max_body_bytes)
            except ClientDisconnect:
                # Nobody is left to read a reply; the status only shows in access logs.
                raise ProtocolError(
                    "client disconnected before the request body was complete",
                    outcome="client_disconnected",
                ) from None
            headers = request.headers
            return InferBody(body, headers.get("content-encoding"), headers.get(BINARY_HEADER))

        answer = await self.route.answer(
            request.path_params["name"], request.path_params.get("version"), arrived
        )
        response = Response(answer.body, status_code=answer.status)
        response.raw_headers = answer.headers
        return response

    def _check_model(self, request: Request) -> int:
        return self._served.live_version(
            request.path_params["name"], request.path_params.get("version")
        )


def _metrics_routes(registry: CollectorRegistry) -> list[BaseRoute]:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # The exact path too, so scrapers need no redirect to the mounted "/metrics/".
    return [
        Route("/metrics", metrics, methods=["GET"], include_in_schema=False),
        Mount("/metrics", make_asgi_app(registry=registry)),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 in the same error body as every other answer."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return error_response(404, f"no route {request.url.path}")
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return error_response(status, f"{detail} for {request.method} {request.url.path}")


def create_app(
    *,
    served: ServedModel,
    max_body_bytes: int,
    metrics_registry: CollectorRegistry | None = None,
    extra_routes: list[BaseRoute] | None = None,
) -> Starlette:
    """Build the ASGI app over ``served`` (the data plane it shares with the gRPC service);
    ``metrics_registry`` (if given) is served at ``/metrics``."""
    endpoints = V2Endpoints(served=served, max_body_bytes=max_body_bytes)
    routes = endpoints.routes() + (extra_routes or [])
    if metrics_registry is not None:
        routes += _metrics_routes(metrics_registry)
    # Exception: an unexpected failure is still a 500 in the error body every answer has
    # (Starlette's default is text/plain); Starlette re-raises it after, so it is logged.
    handlers = {HTTPException: _http_error, Exception: _http_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    # A path with a stray "/" at the end is a 404 that names it, in the error body: Starlette
    # answered a bodiless 307 to the path without it, which OIP clients do not follow.
    app.router.redirect_slashes = False
    # The serving worker answers this route's requests itself (serve/infer_protocol.py).
    app.state.infer_route = endpoints.route
    return app
