"""The admin API: inspect retained versions, pin one, unpin, roll back
(``serve/weights/retained.py``).

| call | route | body |
|---|---|---|
| state | ``GET /v2/admin/versions`` | |
| pin | ``POST /v2/admin/pin`` | ``{"version": "12"}`` |
| unpin | ``POST /v2/admin/unpin`` | |
| rollback | ``POST /v2/admin/rollback`` | |
| split state | ``GET /v2/admin/split`` | |
| set split | ``POST /v2/admin/split`` | ``{"candidate": "12", "share": 0.5, "mode": "split"}`` |
| end split | ``DELETE /v2/admin/split`` | |

The version calls answer the state ``{"live", "pinned", "retained", "pin_persisted"}``, the
split calls ``{"split", "candidate_version"}`` (:mod:`streamtrain.serve.protocol.split`), or
``{"error": ...}``. Access, checked before anything else:

1. no ``serve.admin_token`` configured: 403, the API is disabled;
2. no ``Authorization: Bearer <token>`` header, or another token: 401 (compared in constant
   time; the token is never logged or echoed);
3. then the call runs on a worker thread (a swap may wait for requests on the standby copy).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
import msgspec
from pydantic import SecretStr
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from streamtrain.ascii_int import MAX_DIGITS, parse_ascii_int
from streamtrain.serve.protocol.bodies import ProtocolError, encode_json
from streamtrain.serve.protocol.split import TrafficSplit, parse_plan
from streamtrain.serve.weights.retained import AdminError, RetainedVersions

log = logging.getLogger(__name__)

_MAX_BODY = 4096


class _PinRequest(msgspec.Struct):
    version: int | str


_PIN_DECODER = msgspec.json.Decoder(_PinRequest)


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        encode_json(document), status_code=status, media_type="application/json", headers=headers
    )


class AdminEndpoints:
    """The four admin routes over one :class:`RetainedVersions`."""

    def __init__(
        self, versions: RetainedVersions, token: SecretStr | None, split: TrafficSplit | None = None
    ) -> None:
        self._versions = versions
        self._split = split if split is not None else TrafficSplit(None, versions)
        self._token = None if token is None else token.get_secret_value().encode()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v2/admin/versions", self._guard(self._state), methods=["GET"]),
            Route("/v2/admin/pin", self._guard(self._pin), methods=["POST"]),
            Route("/v2/admin/unpin", self._guard(self._unpin), methods=["POST"]),
            Route("/v2/admin/rollback", self._guard(self._rollback), methods=["POST"]),
            Route("/v2/admin/split", self._guard(self._split_state), methods=["GET"]),
            Route("/v2/admin/split", self._guard(self._set_split), methods=["POST"]),
            Route("/v2/admin/split", self._guard(self._end_split), methods=["DELETE"]),
        ]

    def _guard(
        self, call: Callable[[Request], Awaitable[dict[str, Any]]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if self._token is None:
                return _json(
                    {
                        "error": "the admin API is disabled: set serve.admin_token "
                        "(STREAMTRAIN_SERVE__ADMIN_TOKEN) on the server to enable it"
                    },
                    403,
                )
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self._token
            ):
                return _json(
                    {"error": "admin calls need the header 'Authorization: Bearer <admin_token>'"},
                    401,
                    {"WWW-Authenticate": 'Bearer realm="streamtrain-admin"'},
                )
            try:
                return _json(await call(request))
            except AdminError as exc:
                return _json({"error": str(exc)}, exc.status)
            except ProtocolError as exc:
                return _json({"error": str(exc)}, exc.status)

        return guarded

    async def _state(self, request: Request) -> dict[str, Any]:
        return self._versions.state()

    async def _pin(self, request: Request) -> dict[str, Any]:
        version = await _pin_version(request)
        return await anyio.to_thread.run_sync(self._versions.pin, version)

    async def _unpin(self, request: Request) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self._versions.unpin)

    async def _rollback(self, request: Request) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self._versions.rollback)

    async def _split_state(self, request: Request) -> dict[str, Any]:
        return self._split.state()

    async def _set_split(self, request: Request) -> dict[str, Any]:
        plan = parse_plan(await _body(request))
        log.info("admin: traffic split set to %s", plan.to_json())
        return self._split.set(plan)

    async def _end_split(self, request: Request) -> dict[str, Any]:
        log.info("admin: traffic split ended")
        return self._split.set(None)


async def _pin_version(request: Request) -> int:
    """The version in a bounded ``{"version": ...}`` body; ProtocolError (400) otherwise."""
    body = await _body(request)
    try:
        version = _PIN_DECODER.decode(body).version
    except msgspec.DecodeError as exc:
        raise ProtocolError(f'pin needs a JSON body {{"version": "<version>"}}: {exc}') from None
    number = parse_ascii_int(str(version))
    if number is None:
        raise ProtocolError(
            f"version must be a non-negative integer of 1 to {MAX_DIGITS} ASCII digits, "
            f"got {version!r}"
        )
    return number


async def _body(request: Request) -> bytes:
    """The request body, at most ``_MAX_BODY`` bytes (ProtocolError 413 beyond)."""
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_BODY:
                raise ProtocolError(f"admin request body over {_MAX_BODY} bytes", 413)
    except ClientDisconnect:
        raise ProtocolError("client disconnected before the request body was complete") from None
    return body
