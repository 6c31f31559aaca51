"""Serving throughput and latency, side by side with the Python peers, with and without swaps.

Starts the embedded broker, a streamtrain serving worker and each Python peer that is
installed (each in its own processes, one torch thread each, same model: MLP 32 → 256 → 256 →
10 with softmax and argmax outputs), then drives each with the same load generator
(bench/loadgen.py: ``wrk``, or a bounded asyncio client without it), one 32-float sample per
request:

* streamtrain, OIP JSON; streamtrain, Triton binary tensors (request and outputs binary);
* LitServe (bench/litserve_peer.py, the ``bench`` extra), KServe's ``ModelServer``
  (bench/kserve_peer.py) and MLServer (bench/mlserver_peer.py), the same OIP JSON body; KServe
  and MLServer run from their own virtual environments (``make bench-peers``), a peer not
  installed is left out and said so;
* each without swaps, then with a new snapshot every 100 ms: for streamtrain a snapshot
  published to the topic and hot-swapped by the server (the real path), for a peer a thread
  copying new weights into its model in place (bench/peer_model.py). LitServe runs with its
  faster ZeroMQ queue (``fast_queue=True``). The swaps made during each row are counted
  (streamtrain's ``streamtrain_serve_swaps_total``, the peers' counter files);
* per row the server's CPU per request: user+sys seconds of all its processes over the row ÷
  requests answered (``/proc``), the figure that stays put on a loaded machine.

Rows alternate between servers so drifting machine load hits all alike. Then gRPC beside REST
(``--grpc``, on by default): streamtrain's gRPC port loaded by an async grpcio client in its
own process (bench/grpc_load.py) and its REST port by the load generator, at batch 1 and 64.
Then end-to-end freshness with a real trainer and server (bench/freshness.py), unless
``--skip-freshness``.

Run: ``make bench-peers && .venv/bin/python bench/serve.py`` (``--help``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from freshness import measure as measure_freshness
from loadgen import Body, LoadResult, generator_name, run_load
from loop_stalls import read as read_stalls
from loop_stalls import report as stall_report
from proc_cpu import group_cpu_s, process_cpu_s
from serve_model import API_PATH, model_overrides

from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.builders.server import build_worker
from streamtrain.config import Settings, load_settings
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import spec_for_model
from streamtrain.serve.protocol.bodies import BINARY_HEADER
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.models import build_model

FEATURES = 32
BENCH = Path(__file__).resolve().parent
OURS = "streamtrain"


@dataclass(frozen=True)
class Row:
    server: str
    body: str
    swapping: bool
    swaps: int  # swaps the server made during the row
    load: LoadResult
    cpu_us: float  # server CPU (all its processes) per request answered


@dataclass(frozen=True)
class Peer:
    """A Python peer: its script in bench/, the interpreter that runs it, its health path."""

    name: str
    script: str
    python: Path
    health: str
    installed: bool
    extra: tuple[str, ...] = ()


def peers(workdir: Path) -> list[Peer]:
    litserve = importlib.util.find_spec("litserve") is not None
    kserve, mlserver = BENCH / ".peers/kserve/bin/python", BENCH / ".peers/mlserver/bin/python"
    return [
        Peer(
            "LitServe",
            "litserve_peer.py",
            Path(sys.executable),
            "/health",
            litserve,
            ("--fast-queue",),
        ),
        Peer("KServe", "kserve_peer.py", kserve, "/v2/health/ready", kserve.exists()),
        Peer(
            "MLServer",
            "mlserver_peer.py",
            mlserver,
            "/v2/health/ready",
            mlserver.exists(),
            ("--workdir", str(workdir / "mlserver")),
        ),
    ]


def _serve(overrides: dict[str, Any], engine: str, stalls: Path | None = None) -> None:
    overrides = {**overrides, "serve": {**overrides["serve"], "engine": engine}}
    worker = build_worker(load_settings(overrides=overrides))
    if stalls is not None:
        from loop_stalls import watch

        watch(worker, stalls)
    worker.run()


class Publisher:
    """Publishes snapshots of the configured model with increasing versions."""

    def __init__(self, settings: Settings) -> None:
        self._model = build_model(
            settings.model.name, spec_for_model(settings.model), settings.model.params
        )
        self._writer = SnapshotWriter(
            kafka=KafkaConnection.from_settings(settings.kafka),
            topic=settings.topics.snapshots,
            model_name=settings.model.name,
            settings_hash=settings_hash(settings.model.model_dump(mode="json")),
            chunk_bytes=512 * 1024,
        )
        self.version = 0

    def publish(self) -> None:
        self.version += 1
        with torch.no_grad():
            for param in self._model.parameters():
                param.add_(0.001)
        tensors = {k: v.detach().clone() for k, v in self._model.state_dict().items()}
        self._writer.write(
            SnapshotRequest(
                version=self.version,
                run_id="bench",
                tensors=tensors,
                data_watermark=time.time(),
                offsets={},
                created_at=time.time(),
            )
        )

    def close(self) -> None:
        self._writer.close(5.0)


def json_body(values: np.ndarray[Any, Any]) -> Body:
    tensor = {"name": "input", "shape": [1, FEATURES], "datatype": "FP32"}
    doc = {"inputs": [{**tensor, "data": values.tolist()}]}
    return Body(json.dumps(doc).encode(), {"content-type": "application/json"})


def binary_body(values: np.ndarray[Any, Any]) -> Body:
    raw = values.astype("<f4").tobytes()
    tensor = {"name": "input", "shape": [1, FEATURES], "datatype": "FP32"}
    doc = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(doc).encode()
    return Body(header + raw, {BINARY_HEADER: str(len(header))})


def _wait_ready(url: str, process: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process():
            raise RuntimeError(f"the server for {url} exited before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def _probe(url: str, body: Body) -> None:
    """One request must get the 10 class probabilities, or the rows would measure errors."""
    reply = httpx.post(url, content=body.content, headers=body.headers, timeout=30)
    if reply.status_code != 200:
        raise RuntimeError(f"{url} answered {reply.status_code}: {reply.text[:300]}")
    length = int(reply.headers.get(BINARY_HEADER, len(reply.content)))
    outputs = {o["name"]: o for o in json.loads(reply.content[:length])["outputs"]}
    if outputs["probabilities"]["shape"] != [1, 10]:
        raise RuntimeError(f"{url} answered an unexpected shape: {outputs}")


def _our_swaps(url: str) -> int:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("streamtrain_serve_swaps_total "):
            return int(float(line.split()[1]))
    raise RuntimeError("streamtrain_serve_swaps_total not exported")


@contextmanager
def _publishing(publisher: Publisher, every_s: float) -> Iterator[None]:
    done = threading.Event()

    def swapper() -> None:
        while not done.wait(every_s):
            publisher.publish()

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextmanager
def _peer(
    peer: Peer, port: int, hidden: int, swap_every: float, workdir: Path
) -> Iterator[tuple[Path, int]]:
    """``peer`` on ``port``; yields the flag file that turns its swapper on while it exists,
    and the peer's process group (all its processes)."""
    flag, count = workdir / f"{peer.name}.swap-on", workdir / f"{peer.name}.swaps"
    command = [str(peer.python), str(BENCH / peer.script), "--port", str(port)]
    command += ["--hidden", str(hidden), "--swap-flag", str(flag), "--swap-count", str(count)]
    command += ["--swap-every", str(swap_every), *peer.extra]
    # Its own session, so the worker processes a peer spawns stop with it, and are counted.
    process = subprocess.Popen(command, start_new_session=True, cwd=BENCH)
    try:
        _wait_ready(f"http://127.0.0.1:{port}{peer.health}", lambda: process.poll() is None)
        yield flag, process.pid  # a session leader: its pid is its process group
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _peer_swaps(flag: Path) -> int:
    count = flag.with_name(flag.name.replace(".swap-on", ".swaps"))
    return int(count.read_text() or 0) if count.exists() else 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["auto", "direct", "batching"], default="auto")
    parser.add_argument("--threads", type=int, default=2, help="load generator threads")
    parser.add_argument("--connections", type=int, default=8, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=15.0, help="per row")
    parser.add_argument("--swap-every", type=float, default=0.1, help="seconds between swaps")
    parser.add_argument("--hidden", type=int, default=256, help="MLP hidden width")
    parser.add_argument("--no-grpc", dest="grpc", action="store_false", help="skip gRPC rows")
    parser.add_argument("--grpc-streams", type=int, default=1, help="calls per gRPC channel")
    parser.add_argument("--skip-freshness", action="store_true")
    parser.add_argument(
        "--stalls",
        action="store_true",
        help="record streamtrain's event-loop stalls and garbage collections, printed per row "
        "(bench/loop_stalls.py; its timer adds ~1%% CPU to streamtrain's rows)",
    )
    parser.add_argument("--fresh-rate", type=float, default=1000.0, help="samples/s produced")
    parser.add_argument("--fresh-seconds", type=float, default=20.0)
    return parser.parse_args()


@dataclass(frozen=True)
class Target:
    server: str
    body: str
    url: str
    cpu: Callable[[], float]  # CPU seconds the server's processes have used so far
    swaps: Callable[[], int]
    flag: Path | None  # a peer's swapper switch; None: streamtrain (publishes instead)


def main() -> None:
    args = _arguments()
    load = {"threads": args.threads, "connections": args.connections}
    values = np.random.default_rng(0).normal(size=FEATURES).astype(np.float32)
    bodies = {"JSON": json_body(values), "binary": binary_body(values)}

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        topic = "bench.snapshots"
        broker.create_topics([topic])
        port, grpc_port = free_port(), free_port()
        overrides: dict[str, Any] = {
            "kafka": {"bootstrap_servers": broker.bootstrap_servers},
            "topics": {"snapshots": topic},
            "model": model_overrides(args.hidden),
            "serve": {
                "port": port,
                "grpc_port": grpc_port,
                "model_name": "bench",
                "torch_threads": 1,
            },
        }
        publisher = Publisher(load_settings(overrides=overrides))
        stack.callback(publisher.close)
        publisher.publish()
        stalls = workdir / "stalls.json" if args.stalls else None
        server = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(overrides, args.engine, stalls), daemon=True
        )
        server.start()
        stack.callback(server.join, 10)
        stack.callback(server.terminate)
        ours = f"http://127.0.0.1:{port}"
        _wait_ready(f"{ours}/v2/health/ready", server.is_alive)
        assert server.pid is not None
        pid = server.pid
        targets = [
            Target(
                OURS,
                body,
                f"{ours}{API_PATH}",
                lambda: process_cpu_s(pid),
                lambda: _our_swaps(ours),
                None,
            )
            for body in ("JSON", "binary")
        ]
        missing = []
        for peer in peers(workdir):
            if not peer.installed:
                missing.append(peer.name)
                continue
            peer_port = free_port()
            flag, group = stack.enter_context(
                _peer(peer, peer_port, args.hidden, args.swap_every, workdir)
            )
            targets.append(
                Target(
                    peer.name,
                    "JSON",
                    f"http://127.0.0.1:{peer_port}{API_PATH}",
                    lambda g=group: group_cpu_s(g),
                    lambda f=flag: _peer_swaps(f),
                    flag,
                )
            )
        rows = _http_rows(targets, bodies, publisher, args, load, stalls)
        grpc_rows = _grpc_rows(ours, f"127.0.0.1:{grpc_port}", pid, args) if args.grpc else []
        loads = os.getloadavg()
        stack.close()
        fresh = None
        if not args.skip_freshness:
            fresh = measure_freshness(broker.bootstrap_servers, args.fresh_rate, args.fresh_seconds)

    print(
        f"model=mlp 32->{args.hidden}x2->10, torch threads 1, engine={args.engine}, "
        f"load: {generator_name(args.threads, args.connections, args.seconds)}, "
        f"one 32-float sample per request, swap every {args.swap_every:g} s in swap rows; "
        f"load average at the end {loads[0]:.1f} / {loads[1]:.1f} / {loads[2]:.1f}"
    )
    if missing:
        print(f"not installed, left out: {', '.join(missing)} (make bench-peers; bench extra)")
    print(report(rows))
    if grpc_rows:
        rest_load = generator_name(args.threads, args.connections, args.seconds)
        from grpc_load import generator_name as grpc_generator_name

        grpc_load = grpc_generator_name(args.connections, args.grpc_streams, args.seconds)
        print(f"\ngRPC beside REST (REST: {rest_load}; gRPC: {grpc_load})")
        print(grpc_report(grpc_rows))
    if fresh is not None:
        print(fresh.describe())


def _http_rows(
    targets: list[Target],
    bodies: dict[str, Body],
    publisher: Publisher,
    args: argparse.Namespace,
    load: dict[str, int],
    stalls: Path | None = None,
) -> list[Row]:
    for target in targets:  # a checked answer, then a warm-up not reported
        _probe(target.url, bodies[target.body])
        run_load(target.url, bodies[target.body], seconds=3.0, **load)
    rows: list[Row] = []
    for swapping in (False, True):
        for target in targets:
            before, cpu_before = target.swaps(), target.cpu()
            watched = stalls if target.flag is None else None
            recorded, since = (read_stalls(watched), time.time()) if watched else ({}, 0.0)
            if swapping and target.flag is not None:
                target.flag.touch()
            publishing = swapping and target.flag is None
            with _publishing(publisher, args.swap_every) if publishing else nullcontext():
                result = run_load(target.url, bodies[target.body], seconds=args.seconds, **load)
            if target.flag is not None:
                target.flag.unlink(missing_ok=True)
            cpu = (target.cpu() - cpu_before) / max(result.requests, 1) * 1e6
            swaps = target.swaps() - before
            rows.append(Row(target.server, target.body, swapping, swaps, result, cpu))
            if watched is not None:
                until = time.time()
                time.sleep(0.6)  # the server writes its records twice a second
                line = stall_report(watched, since, until, recorded)
                print(f"{target.server} {target.body} swaps={swaps}: {line}", flush=True)
    return rows


@dataclass(frozen=True)
class GrpcRow:
    transport: str
    batch: int
    load: LoadResult
    cpu_us: float


def _grpc_rows(ours: str, target: str, pid: int, args: argparse.Namespace) -> list[GrpcRow]:
    """Our REST (JSON and binary, the load generator) and gRPC (grpcio) at batch 1 and 64,
    alternating, fixed weights."""
    # imported here: bench/gpu_serve.py imports this module on the device, which has no grpcio
    from grpc_load import infer_request, run_grpc_load

    rng = np.random.default_rng(1)
    rows: list[GrpcRow] = []
    for batch in (1, 64):
        features = rng.normal(size=(batch, FEATURES)).astype(np.float32)
        rest = {"REST JSON": _rows_json(features), "REST binary": _rows_binary(features)}
        request = infer_request("bench", features)
        for body in rest.values():
            _probe_rows(f"{ours}{API_PATH}", body, batch)
        run_grpc_load(target, request, connections=args.connections, seconds=2.0)  # warm-up
        for name in ("REST JSON", "REST binary", "gRPC"):
            before = process_cpu_s(pid)
            if name == "gRPC":
                result = run_grpc_load(
                    target,
                    request,
                    connections=args.connections,
                    streams=args.grpc_streams,
                    seconds=args.seconds,
                )
            else:
                result = run_load(
                    f"{ours}{API_PATH}",
                    rest[name],
                    threads=args.threads,
                    connections=args.connections,
                    seconds=args.seconds,
                )
            cpu = (process_cpu_s(pid) - before) / max(result.requests, 1) * 1e6
            rows.append(GrpcRow(name, batch, result, cpu))
    return rows


def _rows_json(features: np.ndarray[Any, Any]) -> Body:
    tensor = {"name": "input", "shape": list(features.shape), "datatype": "FP32"}
    doc = {"inputs": [{**tensor, "data": features.reshape(-1).tolist()}]}
    return Body(json.dumps(doc).encode(), {"content-type": "application/json"})


def _rows_binary(features: np.ndarray[Any, Any]) -> Body:
    raw = features.astype("<f4").tobytes()
    tensor = {"name": "input", "shape": list(features.shape), "datatype": "FP32"}
    doc = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(doc).encode()
    return Body(header + raw, {BINARY_HEADER: str(len(header))})


def _probe_rows(url: str, body: Body, batch: int) -> None:
    reply = httpx.post(url, content=body.content, headers=body.headers, timeout=30)
    if reply.status_code != 200:
        raise RuntimeError(f"{url} answered {reply.status_code}: {reply.text[:300]}")
    length = int(reply.headers.get(BINARY_HEADER, len(reply.content)))
    outputs = {o["name"]: o for o in json.loads(reply.content[:length])["outputs"]}
    if outputs["probabilities"]["shape"] != [batch, 10]:
        raise RuntimeError(f"{url} answered an unexpected shape: {outputs}")


def report(rows: list[Row]) -> str:
    """A Markdown table; ratios are to the best Python peer (most req/s) with the same swap
    setting."""
    best: dict[bool, Row] = {}
    for r in rows:
        known = best.get(r.swapping)
        if r.server != OURS and (known is None or r.load.rate > known.load.rate):
            best[r.swapping] = r
    lines = [
        "| server | body | swaps | req/s | p50 ms | p99 ms | errors | server CPU µs/req "
        "| req/s ÷ best peer | p99 ÷ best peer |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = best.get(r.swapping)
        ratio = f"{r.load.rate / base.load.rate:.2f}" if base and base.load.rate else "-"
        p99 = f"{r.load.p99_ms / base.load.p99_ms:.2f}" if base and base.load.p99_ms else "-"
        swaps = f"{r.swaps} in {r.load.seconds:.0f} s" if r.swapping else str(r.swaps)
        lines.append(
            f"| {r.server} | {r.body} | {swaps} | {r.load.rate:,.0f} | {r.load.p50_ms:.2f} "
            f"| {r.load.p99_ms:.2f} | {r.load.errors} | {r.cpu_us:,.0f} | {ratio} | {p99} |"
        )
    lines.append(
        "best peer: "
        + ", ".join(f"{'swaps' if k else 'no swaps'} {v.server}" for k, v in sorted(best.items()))
    )
    return "\n".join(lines)


def grpc_report(rows: list[GrpcRow]) -> str:
    """A Markdown table; ratios are gRPC's to REST binary's (and JSON's) at the same batch."""
    lines = [
        "| transport | batch | req/s | rows/s | p50 ms | p99 ms | errors | server CPU µs/req "
        "| req/s ÷ REST binary | p99 ÷ REST binary |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r.batch: r for r in rows if r.transport == "REST binary"}
    for r in rows:
        b = base[r.batch]
        lines.append(
            f"| {r.transport} | {r.batch} | {r.load.rate:,.0f} | {r.load.rate * r.batch:,.0f} "
            f"| {r.load.p50_ms:.2f} | {r.load.p99_ms:.2f} | {r.load.errors} | {r.cpu_us:,.0f} "
            f"| {r.load.rate / b.load.rate:.2f} | {r.load.p99_ms / b.load.p99_ms:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
