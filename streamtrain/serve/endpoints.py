"""The HTTP face of a serving worker: Open Inference Protocol (KServe v2) REST routes.

Status codes: 400 bad request, 404 unknown model / version / route, 413 body over
``max_body_bytes``, 503 no weights yet, 500 an unexpected failure (logged). Every error body is
``{"error": "<what was wrong and how to fix it>"}``.

>>> from streamtrain.serve.inference import DirectEngine, head_for
>>> from streamtrain.serve.slot import WeightSlot
>>> from streamtrain.spec import SampleSpec
>>> import torch
>>> slot = WeightSlot(torch.nn.Linear(2, 1))
>>> io_spec = SampleSpec((2,), "regression")
>>> app = create_app(
...     slot=slot, engine=DirectEngine(slot, head_for(io_spec), torch.device("cpu")),
...     io=ModelIO.for_spec(io_spec), model_name="demo", max_body_bytes=1 << 20,
... )
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
import zlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, make_asgi_app
from starlette.exceptions import HTTPException

from streamtrain.metrics import SERVE_REQUEST_SECONDS, SERVE_REQUESTS
from streamtrain.serve.inference import Engine
from streamtrain.serve.protocol import (
    BINARY_HEADER,
    ModelIO,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
)
from streamtrain.serve.slot import NotReady, WeightSlot

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data"]


def _package_version() -> str:
    try:
        return importlib.metadata.version("streamtrain")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes before reading more than that."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return _decompress(b"".join(chunks), request.headers.get("content-encoding"), limit)


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip | deflate`` (tritonclient's request compression), never
    inflating past ``limit`` bytes, so a small compressed bomb cannot exhaust memory."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if wbits is None:
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise _too_large(len(data), limit)
    return data


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        f"request body too large: {size} bytes exceeds max_body_bytes={limit}; send fewer rows "
        "per request or raise serve.max_body_bytes",
        status=413,
        outcome="too_large",
    )


def create_app(
    *,
    slot: WeightSlot,
    engine: Engine,
    io: ModelIO,
    model_name: str,
    max_body_bytes: int,
    metrics_registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the ASGI app; ``metrics_registry`` (if given) is served at ``/metrics``."""
    app = FastAPI(title="streamtrain", version=_package_version(), docs_url=None, redoc_url=None)
    if metrics_registry is not None:
        registry = metrics_registry

        # The exact path too, so scrapers need no redirect to the mounted "/metrics/".
        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        app.mount("/metrics", make_asgi_app(registry=metrics_registry))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if exc.status_code != 404 else f"no route {request.url.path}"
        return _error(exc.status_code, str(message))

    def check_model(name: str, version: str | None) -> None:
        """Raise ProtocolError for an unknown model, no weights, or a version not live."""
        if name != model_name:
            raise ProtocolError(
                f"unknown model {name!r}; this server serves {model_name!r}", 404, "not_found"
            )
        info = slot.info
        if info is None:
            raise ProtocolError(
                "model not ready: waiting for the first valid weight snapshot", 503, "not_ready"
            )
        if version is not None and version != str(info.version):
            raise ProtocolError(
                f"model {name!r} version {version!r} is not loaded; the live version is "
                f"{info.version} (omit /versions/{{v}} to use the live one)",
                404,
                "not_found",
            )

    def metadata(name: str, version: str | None) -> Response:
        try:
            check_model(name, version)
        except ProtocolError as exc:
            return _error(exc.status, str(exc))
        info = slot.info
        return JSONResponse(
            {
                "name": model_name,
                "versions": [str(info.version)] if info is not None else [],
                "platform": "pytorch",
                "inputs": [io.input.to_json()],
                "outputs": [o.to_json() for o in io.outputs],
            }
        )

    def model_ready(name: str, version: str | None) -> Response:
        try:
            check_model(name, version)
        except ProtocolError as exc:
            return _error(exc.status, str(exc))
        return JSONResponse({"name": model_name, "ready": True})

    async def infer(request: Request, name: str, version: str | None) -> Response:
        started = time.perf_counter()
        try:
            check_model(name, version)
            body = await read_body(request, max_body_bytes)
            parsed = parse_infer_request(body, request.headers.get(BINARY_HEADER), io)
            try:
                prediction = await engine.infer(parsed.features)
            except NotReady as exc:
                raise ProtocolError(str(exc), 503, "not_ready") from exc
            live = str(prediction.info.version)
            if version is not None and version != live:
                raise ProtocolError(
                    f"version {version!r} was replaced by {live} during the request; retry, "
                    "or omit /versions/{v} to use the live one",
                    404,
                    "not_found",
                )
            content, headers = encode_infer_response(
                model_name, live, parsed, prediction.outputs, io
            )
            outcome, response = "ok", Response(content, headers=headers)
        except ProtocolError as exc:
            outcome, response = exc.outcome, _error(exc.status, str(exc))
        except Exception:
            log.exception("inference failed")
            outcome = "error"
            response = _error(500, "internal error during inference; see the server log")
        SERVE_REQUESTS.labels(outcome).inc()
        SERVE_REQUEST_SECONDS.observe(time.perf_counter() - started)
        return response

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "streamtrain", "version": _package_version(), "extensions": EXTENSIONS}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", response_model=None)
    async def ready() -> Response:
        if not slot.ready:
            return _error(503, "not ready: waiting for the first valid weight snapshot")
        return JSONResponse({"ready": True})

    @app.get("/v2/models/{name}", response_model=None)
    async def model_metadata(name: str) -> Response:
        return metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}", response_model=None)
    async def version_metadata(name: str, version: str) -> Response:
        return metadata(name, version)

    @app.get("/v2/models/{name}/ready", response_model=None)
    async def model_is_ready(name: str) -> Response:
        return model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", response_model=None)
    async def version_is_ready(name: str, version: str) -> Response:
        return model_ready(name, version)

    @app.post("/v2/models/{name}/infer", response_model=None)
    async def model_infer(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=None)
    async def version_infer(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    return app
