"""gRPC load for bench/serve.py: an async ``grpcio`` client in its own process.

``connections`` calls in flight back to back for ``seconds`` (``streams`` concurrent calls on
each of ``connections // streams`` channels, HTTP/2 multiplexing them), each a KServe v2
``ModelInfer`` of one fixed request (Triton's raw tensor form: ``raw_input_contents``, the
form ``tritonclient.grpc`` sends); reports requests/s, p50/p99 latency and failed calls as
bench/loadgen.py does for HTTP. The client runs in a process of its own, as wrk does, so its
Python does not share the server's GIL; it costs the machine more per request than wrk (C).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time

import grpc
import numpy as np
from loadgen import LoadResult
from tritonclient.grpc import service_pb2, service_pb2_grpc


def infer_request(model: str, rows: np.ndarray) -> bytes:
    """A serialized ``ModelInferRequest`` of ``rows`` (FP32 [n, features]) as raw tensor bytes."""
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend(rows.shape)
    request.raw_input_contents.append(np.ascontiguousarray(rows, "<f4").tobytes())
    return bytes(request.SerializeToString())


async def _load(
    target: str, request: bytes, connections: int, streams: int, seconds: float
) -> LoadResult:
    parsed = service_pb2.ModelInferRequest.FromString(request)
    latencies: list[float] = []
    errors = 0
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, connections // streams))]
    stubs = [service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
    stop_at = time.monotonic() + seconds

    async def caller(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                await stub.ModelInfer(parsed, timeout=10)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError:
                errors += 1

    started = time.monotonic()
    await asyncio.gather(*(caller(stubs[i % len(stubs)]) for i in range(connections)))
    elapsed = time.monotonic() - started
    for channel in channels:
        await channel.close()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return LoadResult(len(latencies), errors, elapsed, quantiles[49] * 1e3, quantiles[98] * 1e3)


def _child(args: tuple[str, bytes, int, int, float]) -> LoadResult:
    return asyncio.run(_load(*args))


def run_grpc_load(
    target: str,
    request: bytes,
    *,
    connections: int = 8,
    streams: int = 1,
    seconds: float = 15.0,
) -> LoadResult:
    """Load ``target`` (``host:port``) with ``request`` from a fresh process; its result."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_child, ((target, request, connections, streams, seconds),))


def generator_name(connections: int, streams: int, seconds: float) -> str:
    channels = max(1, connections // streams)
    return (
        f"grpcio aio client in its own process, {connections} calls in flight on {channels} "
        f"channel(s), {seconds:g} s"
    )
