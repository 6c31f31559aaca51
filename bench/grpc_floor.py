"""gRPC servers beside streamtrain's own for bench/grpc_serve.py: do-nothing servers of Triton's
``GRPCInferenceService`` (what a gRPC server library itself costs per call on this machine,
before any model: the ``floor`` rows), and streamtrain's data plane on ``grpclib``.

Each servicer parses the request with the generated message class and answers with a prebuilt
``ModelInferResponse`` of the request's row count (10 FP32 zeros a row), unary ``ModelInfer``
and the bidirectional ``ModelStreamInfer``. Three servers, one per kind:

- ``floor``: ``grpc.aio`` (grpcio's asyncio server, what streamtrain ships);
- ``floor-sync``: grpcio's synchronous ``grpc.server`` with a 16-thread pool (its C core
  polls the sockets without holding the GIL; the handlers run on the pool's threads);
- ``floor-grpclib``: ``grpclib`` (pure-asyncio gRPC on the ``h2`` HTTP/2 library) on uvloop,
  when installed (the ``bench`` extra; no dependency of streamtrain's).

``ours-grpclib`` is the one that is not a floor: bench/serve_trees.py's served model answered by
streamtrain's own servicer (``InferenceServicer._infer``, the same data plane as the shipped
``grpc.aio`` endpoint) on grpclib, unary, streaming and ``ModelStatistics``: the same work on
the other transport, to tell whether moving the endpoint to grpclib would pay (bench/README.md,
"gRPC").

Run as ``python bench/grpc_floor.py KIND``: prints the port, then serves until killed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

CLASSES = 10
KINDS = ("floor", "floor-sync", "floor-grpclib", "ours-grpclib")
_SERVICE = "/inference.GRPCInferenceService/"


def grpclib_available() -> bool:
    try:
        import grpclib  # noqa: F401
    except ImportError:
        return False
    return True


def _replies() -> Any:
    from tritonclient.grpc import service_pb2

    known: dict[tuple[int, ...], Any] = {}

    def reply(request: Any) -> Any:
        shape = tuple(request.inputs[0].shape)
        answer = known.get(shape)
        if answer is None:
            answer = service_pb2.ModelInferResponse(model_name="bench", model_version="1")
            answer.outputs.add(name="probabilities", datatype="FP32", shape=[shape[0], CLASSES])
            answer.raw_output_contents.append(bytes(4 * CLASSES * shape[0]))
            known[shape] = answer
        return answer

    return reply


def _grpcio_servicer(asynchronous: bool) -> Any:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    reply = _replies()
    stream_reply = service_pb2.ModelStreamInferResponse

    class Floor(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ModelInfer(self, request: Any, context: Any) -> Any:
            return reply(request)

        async def ModelStreamInfer(self, requests: AsyncIterator[Any], context: Any) -> Any:
            async for request in requests:
                yield stream_reply(infer_response=reply(request))

    class SyncFloor(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        def ModelInfer(self, request: Any, context: Any) -> Any:
            return reply(request)

        def ModelStreamInfer(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            for request in requests:
                yield stream_reply(infer_response=reply(request))

    return Floor() if asynchronous else SyncFloor()


def _serve_grpcio(asynchronous: bool) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    add = service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
    if not asynchronous:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        add(_grpcio_servicer(False), server)
        print(server.add_insecure_port("127.0.0.1:0"), flush=True)
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        server = grpc.aio.server()
        add(_grpcio_servicer(True), server)
        print(server.add_insecure_port("127.0.0.1:0"), flush=True)
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


class _Grpclib:
    """The service for grpclib, which finds handlers by ``__mapping__``: the do-nothing answer,
    or with ``model`` streamtrain's servicer over bench/serve_trees.py's served model."""

    def __init__(self, model: bool) -> None:
        from tritonclient.grpc import service_pb2

        self._pb = service_pb2
        self._servicer: Any = None
        if model:
            from serve_trees import build_worker

            from streamtrain.serve.protocol.grpc_service import InferenceServicer

            self._servicer = InferenceServicer(build_worker().served)
            self._reply = self._servicer._infer
        else:
            floor = _replies()

            async def reply(request: Any) -> Any:
                return floor(request)

            self._reply = reply

    def __mapping__(self) -> dict[str, Any]:
        from grpclib.const import Cardinality, Handler

        pb, unary = self._pb, Cardinality.UNARY_UNARY
        return {
            _SERVICE + "ModelInfer": Handler(
                self._infer, unary, pb.ModelInferRequest, pb.ModelInferResponse
            ),
            _SERVICE + "ModelStreamInfer": Handler(
                self._stream, Cardinality.STREAM_STREAM,
                pb.ModelInferRequest, pb.ModelStreamInferResponse,
            ),
            _SERVICE + "ModelStatistics": Handler(
                self._statistics, unary, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse
            ),
        }  # fmt: skip

    async def _infer(self, stream: Any) -> None:
        from grpclib.const import Status
        from grpclib.exceptions import GRPCError

        from streamtrain.serve.protocol.bodies import ProtocolError

        request = await stream.recv_message()
        try:
            reply = await self._reply(request)
        except ProtocolError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        await stream.send_message(reply)

    async def _stream(self, stream: Any) -> None:
        from streamtrain.serve.protocol.bodies import ProtocolError
        from streamtrain.serve.protocol.grpc_service import _stream_error

        answer = self._pb.ModelStreamInferResponse
        async for request in stream:
            try:
                reply = await self._reply(request)
            except ProtocolError as exc:
                await stream.send_message(_stream_error(str(exc), request))
            else:
                await stream.send_message(answer(infer_response=reply))

    async def _statistics(self, stream: Any) -> None:
        request = await stream.recv_message()
        if self._servicer is None:
            await stream.send_message(self._pb.ModelStatisticsResponse())
        else:
            await stream.send_message(await self._servicer.ModelStatistics(request, None))


def _serve_grpclib(model: bool) -> None:
    import uvloop
    from grpclib.server import Server

    async def main() -> None:
        server = Server([_Grpclib(model)])
        await server.start("127.0.0.1", 0)
        # grpclib keeps the asyncio server it bound as ``_server``: the only way to its port
        print(server._server.sockets[0].getsockname()[1], flush=True)
        await server.wait_closed()

    uvloop.run(main())


def serve(kind: str) -> None:
    if kind in ("floor-grpclib", "ours-grpclib"):
        _serve_grpclib(kind == "ours-grpclib")
    elif kind in ("floor", "floor-sync"):
        _serve_grpcio(kind == "floor")
    else:
        raise SystemExit(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


if __name__ == "__main__":
    serve(sys.argv[1])
