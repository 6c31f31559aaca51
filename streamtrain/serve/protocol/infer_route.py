"""The OIP infer route as bytes in, HTTP answer out: what the serving worker's fast protocol
(:mod:`streamtrain.serve.infer_protocol`) calls for ``POST /v2/models/<name>[/versions/<v>]/infer``
without going through the ASGI app.

The app's own infer endpoint (:meth:`~streamtrain.serve.protocol.rest.V2Endpoints.infer`)
calls it too, so both paths run one sequence: the data plane's
:meth:`~streamtrain.serve.protocol.dataplane.ServedModel.infer` (model and version check, then
the body, forward, prediction log, metrics, statistics), the body's decoding
(``Content-Encoding``, Triton's binary extension) and encoding, and one :class:`Answer` (status,
body, headers as Starlette's ``Response`` lays them out), so a client cannot tell which path
answered.

>>> import torch
>>> from streamtrain.serve.protocol.bodies import ModelIO
>>> from streamtrain.serve.protocol.dataplane import ServedModel
>>> from streamtrain.serve.weights.inference import DirectEngine, head_for
>>> from streamtrain.serve.weights.slot import WeightSlot
>>> from streamtrain.sample.spec import SampleSpec
>>> spec = SampleSpec((2,), "regression")
>>> slot = WeightSlot(torch.nn.Linear(2, 1))
>>> served = ServedModel(
...     slot=slot, engine=DirectEngine(slot, head_for(spec), torch.device("cpu")),
...     io=ModelIO.for_spec(spec), name="demo",
... )
>>> route = InferRoute(served, max_body_bytes=1 << 20)
>>> route.match(b"/v2/models/demo/versions/3/infer"), route.match(b"/v2/models/demo")
(('demo', '3'), None)
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

from streamtrain.serve.protocol.bodies import (
    InferRequest,
    ProtocolError,
    encode_json,
    parse_infer_request,
)
from streamtrain.serve.protocol.dataplane import ServedModel
from streamtrain.serve.protocol.replies import encode_infer_response
from streamtrain.serve.weights.inference import Array

# The app's two infer routes (rest.V2Endpoints.routes), as Starlette compiles "{name}":
# one path segment each. A path with "%" escapes is left to the app, which unquotes it.
_INFER_PATH = re.compile(rb"/v2/models/([^/%]+)(?:/versions/([^/%]+))?/infer")

Headers = list[tuple[bytes, bytes]]
_JSON_TYPE = (b"content-type", b"application/json")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
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
        raise too_large(len(data), limit)
    return data


def too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        f"request body too large: {size} bytes exceeds max_body_bytes={limit}; send fewer rows "
        "per request or raise serve.max_body_bytes",
        status=413,
        outcome="too_large",
    )


class InferBody(NamedTuple):
    """A request's body as it arrived and the headers that say how to read it."""

    body: bytes
    encoding: str | None
    binary_header: str | None


class Answer(NamedTuple):
    """An HTTP answer: status, body and headers, in the order Starlette's ``Response`` has
    them (the transport adds the status line, its default headers and ``connection``)."""

    status: int
    body: bytes
    headers: Headers


class InferRoute:
    """The infer endpoint of one served model, for a transport that parsed the request."""

    def __init__(self, served: ServedModel, max_body_bytes: int) -> None:
        self._served = served
        self._io = served.io
        self._model_name = served.name
        self.max_body_bytes = max_body_bytes

    @staticmethod
    def match(path: bytes) -> tuple[str, str | None] | None:
        """``(name, version)`` of an infer path, None for any other path."""
        found = _INFER_PATH.fullmatch(path)
        if found is None:
            return None
        name, version = found.groups()
        return name.decode("latin-1"), None if version is None else version.decode("latin-1")

    def too_large(self, size: int) -> ProtocolError:
        return too_large(size, self.max_body_bytes)

    async def answer(
        self, name: str, version: str | None, arrived: Callable[[], Awaitable[InferBody]]
    ) -> Answer:
        """The answer to one infer request whose body ``arrived`` gives (or raises the
        ProtocolError that stands for it); every failure is its 4xx/5xx error answer."""

        async def decode() -> InferRequest:
            request = await arrived()
            body = decompress(request.body, request.encoding, self.max_body_bytes)
            return parse_infer_request(body, request.binary_header, self._io)

        def encode(
            model_version: str, parsed: InferRequest, outputs: Mapping[str, Array]
        ) -> Answer:
            content, headers = encode_infer_response(
                self._model_name, model_version, parsed, outputs, self._io
            )
            headers.append((b"content-length", b"%d" % len(content)))
            return Answer(200, content, headers)

        try:
            return await self._served.infer(name, version, decode, encode)
        except ProtocolError as exc:
            body = encode_json({"error": str(exc)})
            length = (b"content-length", str(len(body)).encode("latin-1"))
            return Answer(exc.status, body, [length, _JSON_TYPE])
