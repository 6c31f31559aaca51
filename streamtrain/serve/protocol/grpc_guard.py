"""A gRPC request that is not its method's protobuf message gets ``INVALID_ARGUMENT``.

grpcio parses each request with the method's ``FromString`` before any handler runs; bytes
that do not parse (cut short, flipped, another message) end the call with ``UNKNOWN`` and a
logged traceback, which is the gRPC face of a 5xx. :class:`UndecodableRequests` wraps every
unary method's parser so that such bytes reach the handler as an :class:`_Undecodable` instead,
and the call ends with ``INVALID_ARGUMENT`` saying what could not be parsed, like any other
bad request (guarantee 2). Valid messages go through untouched.

The methods this server leaves to the generated base servicer raise ``NotImplementedError``
after setting ``UNIMPLEMENTED``, which grpcio also logs with a traceback; here they end with
``UNIMPLEMENTED`` and a one-line reason instead, nothing logged.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

_Handler = Any  # grpc.RpcMethodHandler; grpcio ships no type information


@dataclass(frozen=True)
class _Undecodable:
    why: str


class UndecodableRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Undecodable request bytes -> ``INVALID_ARGUMENT``; methods not implemented ->
    ``UNIMPLEMENTED`` without a logged traceback (module docstring)."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[_Handler]], details: Any
    ) -> _Handler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler  # streaming methods (none is implemented here) keep grpcio's way
        parse = handler.request_deserializer
        behavior = handler.unary_unary
        method = str(details.method).rsplit("/", 1)[-1]

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # whatever the parser refuses is the sender's error
                return _Undecodable(f"{type(exc).__name__}: {exc}")

        async def guarded(request: Any, context: Any) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {method} message ({request.why}); send the "
                    "KServe v2 protobuf message of this method",
                )
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
