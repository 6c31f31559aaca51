"""gRPC load for bench/serve.py and bench/grpc_serve.py: an async ``grpcio`` client in its own
process.

``connections`` calls in flight back to back for ``seconds`` (``streams`` concurrent calls on
each of ``connections // streams`` channels, HTTP/2 multiplexing them), each a KServe v2
``ModelInfer`` of one fixed request (Triton's raw tensor form: ``raw_input_contents``, the
form ``tritonclient.grpc`` sends); reports requests/s, p50/p99 latency and failed calls as
bench/loadgen.py does for HTTP. ``mode="stream"`` sends the same request over Triton's
bidirectional ``ModelStreamInfer`` instead (what ``perf_analyzer --streaming`` and
``tritonclient``'s ``async_stream_infer`` use): one stream per call in flight, each writing
its next request when the previous answer arrived, as wrk's connections do.

The client sends and receives bytes (the request serialised once, answers not parsed), so
its own cost per call is grpcio's alone; it still runs Python and costs the machine more per
request than wrk (C), which it shares the cores with. It runs in a process of its own, as wrk
does, so its Python does not share the server's GIL.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from loadgen import LoadResult
from tritonclient.grpc import service_pb2

_SERVICE = "/inference.GRPCInferenceService/"


def infer_request(model: str, rows: np.ndarray) -> bytes:
    """A serialized ``ModelInferRequest`` of ``rows`` (FP32 [n, features]) as raw tensor bytes."""
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend(rows.shape)
    request.raw_input_contents.append(np.ascontiguousarray(rows, "<f4").tobytes())
    return bytes(request.SerializeToString())


def stream_error(reply: bytes) -> bool:
    """Whether a serialised ``ModelStreamInferResponse`` carries an error: its
    ``error_message`` (field 1, tag byte 0x0a) is serialised first when set, so the answer
    need not be parsed on the client's hot path."""
    return reply[:1] == b"\x0a"


async def _load(
    target: str, request: bytes, connections: int, streams: int, seconds: float, mode: str
) -> tuple[LoadResult, float]:
    latencies: list[float] = []
    errors = 0
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, connections // streams))]
    # No serializers: bytes in, bytes out.
    unary = [c.unary_unary(_SERVICE + "ModelInfer") for c in channels]
    bidi = [c.stream_stream(_SERVICE + "ModelStreamInfer") for c in channels]
    stop_at = time.monotonic() + seconds

    async def caller(i: int) -> None:
        nonlocal errors
        method = unary[i % len(unary)]
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                await method(request, timeout=10)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError:
                errors += 1

    async def streamer(i: int) -> None:
        nonlocal errors
        call = bidi[i % len(bidi)](timeout=seconds + 30)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            await call.write(request)
            reply = await call.read()
            if reply is grpc.aio.EOF or stream_error(reply):
                errors += 1
                if reply is grpc.aio.EOF:
                    return
            else:
                latencies.append(time.perf_counter() - started)
        await call.done_writing()
        if await call.code() != grpc.StatusCode.OK:
            errors += 1

    work = caller if mode == "unary" else streamer
    cpu_before = os.times()
    started = time.monotonic()
    await asyncio.gather(*(work(i) for i in range(connections)))
    elapsed = time.monotonic() - started
    cpu_after = os.times()
    for channel in channels:
        await channel.close()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    result = LoadResult(len(latencies), errors, elapsed, quantiles[49] * 1e3, quantiles[98] * 1e3)
    return result, cpu / max(len(latencies), 1) * 1e6


def _child(args: tuple[str, bytes, int, int, float, str]) -> tuple[LoadResult, float]:
    return asyncio.run(_load(*args))


def run_grpc_load(
    target: str,
    request: bytes,
    *,
    connections: int = 8,
    streams: int = 1,
    seconds: float = 15.0,
    mode: str = "unary",
) -> LoadResult:
    """Load ``target`` (``host:port``) with ``request`` from a fresh process; its result."""
    return run_grpc_load_cpu(
        target, request, connections=connections, streams=streams, seconds=seconds, mode=mode
    )[0]


def run_grpc_load_cpu(
    target: str,
    request: bytes,
    *,
    connections: int = 8,
    streams: int = 1,
    seconds: float = 15.0,
    mode: str = "unary",
) -> tuple[LoadResult, float]:
    """:func:`run_grpc_load`'s result and the client's own CPU µs per answered call."""
    if mode not in ("unary", "stream"):
        raise ValueError(f"mode must be 'unary' or 'stream', not {mode!r}")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_child, ((target, request, connections, streams, seconds, mode),))


def h2load_available() -> bool:
    """Whether nghttp2's ``h2load`` (Debian ``nghttp2-client``) is on PATH."""
    return shutil.which("h2load") is not None


def run_h2load_unary(
    target: str, request: bytes, *, connections: int = 8, seconds: float = 15.0
) -> tuple[LoadResult, float]:
    """Unary ``ModelInfer`` load from ``h2load`` (C, nghttp2): ``connections`` HTTP/2
    connections, one call in flight on each, each call a POST of the gRPC-framed ``request``
    (1 flag byte, 4-byte big-endian length, the message). The C client costs the shared
    cores about a tenth of the grpcio client's CPU per call (bench/README.md, Serve, gRPC).

    h2load checks only the HTTP status; a gRPC failure is HTTP 200 with ``grpc-status`` in the
    trailers, so the caller checks the server's own count of answered calls (bench/grpc_serve.py
    compares ``streamtrain_serve_requests_total{outcome="ok"}``). Latency quantiles come from
    h2load's per-request log. Returns the result and h2load's CPU µs per call."""
    with tempfile.TemporaryDirectory() as folder:
        body, log = Path(folder) / "body", Path(folder) / "log"
        body.write_bytes(b"\0" + struct.pack(">I", len(request)) + request)
        command = [
            "h2load", f"-c{connections}", "-m1", "-t1", f"-D{seconds:g}", f"-d{body}",
            "-H", "content-type: application/grpc", "-H", "te: trailers", f"--log-file={log}",
            f"http://{target}{_SERVICE}ModelInfer",
        ]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(command, check=True, capture_output=True, timeout=seconds + 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    ok = sorted(int(r[2]) / 1e3 for r in rows if r[1].startswith("2"))
    # columns: start (µs since the epoch), HTTP status (-1: failed), µs to the end of the answer
    starts = [int(r[0]) for r in rows]
    elapsed = (max(int(r[0]) + int(r[2]) for r in rows) - min(starts)) / 1e6 if rows else 0.0
    quantiles = statistics.quantiles(ok, n=100) if len(ok) > 1 else [0.0] * 99
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = LoadResult(len(ok), len(rows) - len(ok), elapsed, quantiles[49], quantiles[98])
    return result, cpu / max(len(ok), 1) * 1e6


def generator_name(connections: int, streams: int, seconds: float) -> str:
    channels = max(1, connections // streams)
    return (
        f"grpcio aio client in its own process, {connections} calls (or streams) in flight on "
        f"{channels} channel(s), {seconds:g} s"
    )
