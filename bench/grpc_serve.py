"""gRPC beside REST on one streamtrain server, unary and streaming, with grpcio's own floor.

Servers, each a process of its own:

- ``ours``: bench/serve_trees.py's worker (MLP 32 → 256 → 256 → 10, one torch thread, direct
  engine, fixed weights, no Kafka) with its gRPC port, loaded over REST by wrk (OIP JSON and
  binary tensor bodies, bench/loadgen.py) and over gRPC by bench/grpc_load.py (unary
  ``ModelInfer`` and Triton's ``ModelStreamInfer`` stream, raw tensor contents);
- ``floor``, ``floor-sync``, ``floor-grpclib``: a do-nothing servicer of the same service
  (bench/grpc_floor.py) on ``grpc.aio``, on grpcio's synchronous server with a thread pool, and
  on ``grpclib`` (when installed): what each gRPC server library itself costs per call on this
  machine, unary (grpcio client and h2load) and streaming.

``gRPC unary (h2load)``: ours again, unary, loaded by nghttp2's ``h2load`` (C) instead of the
grpcio client, when it is installed (Debian ``nghttp2-client``): a C client on both protocols
(wrk for REST), so neither pays a Python client's CPU on the shared cores. h2load sees only
HTTP status; failed gRPC calls are counted from the server's ``ModelStatistics``.

For each batch (1 and 64) and round, every row runs alone for ``--seconds`` in an order that
flips every round. Server CPU µs/req = the server process's user+sys CPU over the row ÷ answers
(``/proc``); client CPU µs/req the gRPC client's own (wrk's is not measured).

    flock -w 1500 /work/bench.lock .venv/bin/python bench/grpc_serve.py --seconds 5 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from grpc_floor import KINDS, grpclib_available

_HERE = Path(__file__).resolve().parent
FEATURES = 32


def _serve_ours(grpc_only: bool = False) -> None:
    from serve_trees import build_worker

    worker = build_worker(grpc=True)
    print(json.dumps({"http": worker.port, "grpc": worker.grpc.port}), flush=True)
    if not grpc_only:
        worker.run()
        return
    worker.grpc.start()  # the gRPC thread alone: no uvicorn, no snapshot watcher
    threading.Event().wait()


@dataclass
class Server:
    name: str
    process: subprocess.Popen[str]
    grpc: str
    rest: str | None


def _start(kind: str) -> Server:
    env = {**os.environ, "PYTHONPATH": f"{_HERE.parent}{os.pathsep}{_HERE}"}
    script = __file__ if kind == "ours" else str(_HERE / "grpc_floor.py")
    command = [sys.executable, script] + (["--child", kind] if kind == "ours" else [kind])
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if kind != "ours":
        time.sleep(1.0)
        return Server(kind, process, f"127.0.0.1:{line}", None)
    from serve import _wait_ready

    ports = json.loads(line)
    url = f"http://127.0.0.1:{ports['http']}"
    _wait_ready(f"{url}/v2/health/ready", lambda: process.poll() is None)
    return Server(kind, process, f"127.0.0.1:{ports['grpc']}", url + "/v2/models/bench/infer")


@dataclass(frozen=True)
class Row:
    name: str
    batch: int
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_us: float
    client_us: float | None


def _run(server: Server, name: str, batch: int, args: argparse.Namespace) -> Row:
    import numpy as np
    from grpc_load import infer_request, run_grpc_load_cpu, run_h2load_unary
    from loadgen import run_load
    from proc_cpu import process_cpu_s
    from serve import _rows_binary, _rows_json

    features = np.random.default_rng(1).normal(size=(batch, FEATURES)).astype(np.float32)
    before = process_cpu_s(server.process.pid)
    client: float | None = None
    if name.startswith("REST"):
        assert server.rest is not None
        body = _rows_json(features) if name == "REST JSON" else _rows_binary(features)
        result = run_load(
            server.rest, body, threads=2, connections=args.connections, seconds=args.seconds
        )
    elif name.endswith("(h2load)"):
        counted = server.name.startswith("ours")  # a floor keeps no count and cannot fail
        answered = _answered(server.grpc) if counted else 0
        result, client = run_h2load_unary(
            server.grpc, infer_request("bench", features), connections=args.connections,
            seconds=args.seconds,
        )  # fmt: skip
        if counted:
            # h2load sees HTTP 200 for a failed gRPC call: the server's own count says what
            # failed (it may exceed h2load's by the calls in flight when h2load stopped).
            ok = _answered(server.grpc) - answered
            failed = result.errors + max(0, result.requests - ok)
            result = dataclasses.replace(result, errors=failed)
    else:
        result, client = run_grpc_load_cpu(
            server.grpc,
            infer_request("bench", features),
            connections=args.connections,
            seconds=args.seconds,
            mode="stream" if name.endswith("stream") else "unary",
        )
    cpu = (process_cpu_s(server.process.pid) - before) / max(result.requests, 1) * 1e6
    label = name if server.name == "ours" else f"{server.name} {name.removeprefix('gRPC ')}"
    return Row(label, batch, result.rate, result.p50_ms, result.p99_ms, result.errors, cpu, client)


_OURS = ("REST JSON", "REST binary", "gRPC unary", "gRPC stream")
_H2LOAD = "gRPC unary (h2load)"


def _answered(target: str) -> int:
    """The calls the server answered successfully so far (Triton's ``ModelStatistics``)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="bench"), timeout=30)
    return sum(int(m.inference_stats.success.count) for m in reply.model_stats)


def _table(rows: list[Row]) -> str:
    lines = [
        "| transport | batch | req/s | rows/s | p50 ms | p99 ms | errors | server CPU µs/req "
        "| client CPU µs/req | req/s ÷ REST binary | p99 ÷ REST binary |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r.batch: r for r in rows if r.name == "REST binary"}
    for r in rows:
        b = base[r.batch]
        client = "-" if r.client_us is None else f"{r.client_us:,.0f}"
        lines.append(
            f"| {r.name} | {r.batch} | {r.rate:,.0f} | {r.rate * r.batch:,.0f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.errors} | {r.server_us:,.0f} | {client} "
            f"| {r.rate / b.rate:.2f} | {r.p99_ms / b.p99_ms:.2f} |"
        )
    return "\n".join(lines)


def _median_rows(runs: list[Row]) -> list[Row]:
    """One row per (name, batch): the median of each figure over the rounds."""
    keys = list(dict.fromkeys((r.name, r.batch) for r in runs))
    merged = []
    for name, batch in keys:
        same = [r for r in runs if (r.name, r.batch) == (name, batch)]
        clients = [r.client_us for r in same if r.client_us is not None]
        merged.append(
            Row(
                name,
                batch,
                statistics.median(r.rate for r in same),
                statistics.median(r.p50_ms for r in same),
                statistics.median(r.p99_ms for r in same),
                sum(r.errors for r in same),
                statistics.median(r.server_us for r in same),
                statistics.median(clients) if clients else None,
            )
        )
    return merged


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _serve_ours(sys.argv[2] == "ours-grpc-only")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load per row")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8, help="calls in flight")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--others", nargs="*", choices=KINDS, default=list(KINDS),
        help="servers to load beside ours (bench/grpc_floor.py; none: --others with no name)",
    )  # fmt: skip
    parser.add_argument("--no-floor", dest="others", action="store_const", const=[])
    parser.add_argument(
        "--no-h2load", dest="h2load", action="store_false",
        help="skip the unary row loaded by h2load (C; run when h2load is installed)",
    )  # fmt: skip
    args = parser.parse_args()
    from grpc_load import h2load_available

    others = [k for k in args.others if "grpclib" not in k or grpclib_available()]
    servers = [_start("ours")] + [_start(kind) for kind in others]
    h2load = (_H2LOAD,) if args.h2load and h2load_available() else ()
    plan = [(servers[0], name) for name in _OURS + h2load]
    plan += [(s, name) for s in servers[1:] for name in ("gRPC unary", *h2load, "gRPC stream")]
    runs: list[Row] = []
    print(f"load average before {os.getloadavg()}", flush=True)
    try:
        for batch in args.batches:
            for server, name in plan:  # warm-up, not reported
                _run(server, name, batch, argparse.Namespace(**{**vars(args), "seconds": 1.0}))
            for i in range(args.rounds):
                for server, name in plan if i % 2 == 0 else plan[::-1]:
                    row = _run(server, name, batch, args)
                    runs.append(row)
                    print(f"round {i + 1}: {row}", flush=True)
    finally:
        for server in servers:
            server.process.terminate()
            server.process.wait(30)
    print(f"load average after {os.getloadavg()}")
    order = {name: i for i, name in enumerate(dict.fromkeys(r.name for r in runs))}
    print(_table(sorted(_median_rows(runs), key=lambda r: (r.batch, order[r.name]))))


if __name__ == "__main__":
    main()
