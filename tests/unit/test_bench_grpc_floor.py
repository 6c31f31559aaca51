"""bench/grpc_floor.py's servers answer what Triton's gRPC clients send: the floor rows measure
real calls, not refusals (no throughput is asserted)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def grpc_floor() -> Iterator[Any]:
    sys.path.insert(0, str(BENCH))
    try:
        import grpc_floor

        yield grpc_floor
    finally:
        sys.path.remove(str(BENCH))


def _request(rows: int) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="bench")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[rows, 32])
    assert tensor.name == "input"
    request.raw_input_contents.append(np.ones((rows, 32), "<f4").tobytes())
    return request


def _check(target: str) -> None:
    """One unary call and a stream of two, each answered with the request's row count."""
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(_request(3), timeout=30)
        assert list(reply.outputs[0].shape) == [3, 10]
        assert len(reply.raw_output_contents[0]) == 3 * 10 * 4
        answers = list(stub.ModelStreamInfer(iter([_request(1), _request(64)]), timeout=30))
    assert [list(a.infer_response.outputs[0].shape) for a in answers] == [[1, 10], [64, 10]]
    assert not any(a.error_message for a in answers)


def test_the_grpcio_floor_servers_answer_unary_and_stream_calls(grpc_floor: Any) -> None:
    from concurrent import futures

    add = service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add(grpc_floor._grpcio_servicer(False), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        _check(f"127.0.0.1:{port}")
    finally:
        server.stop(None)

    async def aio() -> None:
        server = grpc.aio.server()
        add(grpc_floor._grpcio_servicer(True), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await asyncio.to_thread(_check, f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    asyncio.run(aio())


def test_the_grpclib_floor_answers_unary_and_stream_calls(grpc_floor: Any) -> None:
    pytest.importorskip("grpclib", reason="grpclib is in the bench extra only")
    from grpclib.server import Server

    async def run() -> None:
        server = Server([grpc_floor._Grpclib(model=False)])
        await server.start("127.0.0.1", 0)
        port = server._server.sockets[0].getsockname()[1]
        try:
            await asyncio.to_thread(_check, f"127.0.0.1:{port}")
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())
