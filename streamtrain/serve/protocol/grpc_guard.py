"""A gRPC request that is not its method's protobuf message gets ``INVALID_ARGUMENT``.

grpcio parses each request with the method's ``FromString`` before any handler runs; bytes
that do not parse (cut short, flipped, another message) end the call with ``UNKNOWN`` and a
logged traceback, which is the gRPC face of a 5xx. :func:`add_guarded` wraps every
method's parser so that such bytes reach the handler as an :class:`Undecodable` instead: a
unary call ends with ``INVALID_ARGUMENT`` saying what could not be parsed, like any other bad
request (guarantee 2); in a stream the servicer gets the :class:`Undecodable` among the
requests and answers it with an error message, the stream going on. Valid messages go through
untouched.

The methods this server leaves to the generated base servicer raise ``NotImplementedError``
after setting ``UNIMPLEMENTED``, which grpcio also logs with a traceback; here they end with
``UNIMPLEMENTED`` and a one-line reason instead, nothing logged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

_Handler = Any  # grpc.RpcMethodHandler; grpcio ships no type information


@dataclass(frozen=True)
class Undecodable:
    """Bytes that were not the method's message, and what the parser said."""

    why: str

    def message(self, method: str) -> str:
        return (
            f"the request is not a valid {method} message ({self.why}); send the "
            "KServe v2 protobuf message of this method"
        )


class _Registry:
    """Stands in for the server while the generated ``add_..._to_server`` registers: keeps
    the method handlers it hands over."""

    def __init__(self) -> None:
        self.services: list[tuple[str, dict[str, _Handler]]] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come again, by name, in add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, _Handler]) -> None:
        self.services.append((service, handlers))


def add_guarded(add_to_server: Callable[[Any, Any], None], servicer: Any, server: Any) -> None:
    """Register ``servicer`` on ``server`` as the generated ``add_to_server`` would, every unary
    method wrapped once so undecodable bytes get ``INVALID_ARGUMENT`` and methods not
    implemented ``UNIMPLEMENTED`` (module docstring). Wrapped at registration, not by a
    ``grpc.aio`` interceptor, which runs for every call: measured, the interceptor took about
    a quarter of the server's CPU per gRPC request (bench/README.md, Serve)."""
    registry = _Registry()
    add_to_server(servicer, registry)
    for service, handlers in registry.services:
        guarded = {name: _guard(name, handler) for name, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        server.add_registered_method_handlers(service, guarded)


def _guard(method: str, handler: _Handler) -> _Handler:
    parse = handler.request_deserializer
    if parse is None:
        return handler

    def tolerant(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # whatever the parser refuses is the sender's error
            return Undecodable(f"{type(exc).__name__}: {exc}")

    if handler.stream_stream is not None:  # the servicer answers an Undecodable in the stream
        return grpc.stream_stream_rpc_method_handler(
            handler.stream_stream,
            request_deserializer=tolerant,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_unary is None:
        return handler  # no unary-stream or stream-unary method in this service
    behavior = handler.unary_unary

    async def guarded(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message(method))
        try:
            result = behavior(request, context)
        except NotImplementedError:  # the generated base servicer's methods raise it
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"this server does not implement {method}"
            )
        return await result if inspect.isawaitable(result) else result

    return grpc.unary_unary_rpc_method_handler(
        guarded,
        request_deserializer=tolerant,
        response_serializer=handler.response_serializer,
    )
