"""Serving throughput and latency, side by side with LitServe, with and without hot swaps.

Starts the embedded broker, a streamtrain serving worker and a LitServe server (each in its
own processes, one torch thread each, same model: MLP 32 → 256 → 256 → 10 with softmax and
argmax outputs), then drives each with the same load generator (bench/loadgen.py: ``wrk``, or
a bounded asyncio client without it), one 32-float sample per request:

* streamtrain, OIP JSON; streamtrain, Triton binary tensors (request and outputs binary);
  LitServe, the same OIP JSON body (LitServe has no binary tensor protocol);
* each without swaps, then with a new snapshot every 100 ms: for streamtrain a snapshot
  published to the topic and hot-swapped by the server (the real path), for LitServe a thread
  copying new weights into its model (bench/litserve_peer.py). LitServe runs with its faster
  ZeroMQ queue (``fast_queue=True``), which served more requests than its default here. The
  swaps made during each row are counted (streamtrain's ``streamtrain_serve_swaps_total``,
  LitServe's counter file).

Rows alternate between servers so drifting machine load hits both alike. Then end-to-end
freshness with a real trainer and server (bench/freshness.py), unless ``--skip-freshness``.

Run: ``.venv/bin/python bench/serve.py`` (needs the ``bench`` extra for LitServe; ``--help``).
"""

from __future__ import annotations

import argparse
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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from freshness import measure as measure_freshness
from loadgen import Body, LoadResult, generator_name, run_load
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


@dataclass(frozen=True)
class Row:
    server: str
    body: str
    swapping: bool
    swaps: int  # swaps the server made during the row
    load: LoadResult


def _serve(overrides: dict[str, Any], engine: str) -> None:
    overrides = {**overrides, "serve": {**overrides["serve"], "engine": engine}}
    worker = build_worker(load_settings(overrides=overrides))
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
def _litserve(port: int, hidden: int, swap_every: float, workdir: Path) -> Iterator[Path]:
    """LitServe on ``port``; yields the flag file that turns its swapper on while it exists."""
    flag, count = workdir / "swap-on", workdir / "swaps"
    script = Path(__file__).with_name("litserve_peer.py")
    command = [sys.executable, str(script), "--port", str(port), "--hidden", str(hidden)]
    command += ["--swap-flag", str(flag), "--swap-count", str(count)]
    command += ["--swap-every", str(swap_every), "--fast-queue"]
    # Its own session, so the API server and worker processes LitServe spawns stop with it.
    process = subprocess.Popen(command, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/health", lambda: process.poll() is None)
        yield flag
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _lit_swaps(flag: Path) -> int:
    count = flag.with_name("swaps")
    return int(count.read_text() or 0) if count.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["auto", "direct", "batching"], default="auto")
    parser.add_argument("--threads", type=int, default=2, help="load generator threads")
    parser.add_argument("--connections", type=int, default=8, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=15.0, help="per row")
    parser.add_argument("--swap-every", type=float, default=0.1, help="seconds between swaps")
    parser.add_argument("--hidden", type=int, default=256, help="MLP hidden width")
    parser.add_argument("--skip-freshness", action="store_true")
    parser.add_argument("--fresh-rate", type=float, default=1000.0, help="samples/s produced")
    parser.add_argument("--fresh-seconds", type=float, default=20.0)
    args = parser.parse_args()
    load = {"threads": args.threads, "connections": args.connections}
    values = np.random.default_rng(0).normal(size=FEATURES).astype(np.float32)
    bodies = {"JSON": json_body(values), "binary": binary_body(values)}

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as workdir:
        topic = "bench.snapshots"
        broker.create_topics([topic])
        port, lit_port = free_port(), free_port()
        overrides: dict[str, Any] = {
            "kafka": {"bootstrap_servers": broker.bootstrap_servers},
            "topics": {"snapshots": topic},
            "model": model_overrides(args.hidden),
            "serve": {"port": port, "model_name": "bench", "torch_threads": 1},
        }
        publisher = Publisher(load_settings(overrides=overrides))
        publisher.publish()
        server = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(overrides, args.engine), daemon=True
        )
        server.start()
        ours = f"http://127.0.0.1:{port}"
        rows: list[Row] = []
        try:
            _wait_ready(f"{ours}/v2/health/ready", server.is_alive)
            with _litserve(lit_port, args.hidden, args.swap_every, Path(workdir)) as flag:
                targets = [
                    ("streamtrain", "JSON", ours + "/v2/models/bench/infer"),
                    ("streamtrain", "binary", ours + "/v2/models/bench/infer"),
                    ("LitServe", "JSON", f"http://127.0.0.1:{lit_port}{API_PATH}"),
                ]
                for _, body, url in targets:  # a checked answer, then a warm-up not reported
                    _probe(url, bodies[body])
                    run_load(url, bodies[body], seconds=3.0, **load)
                for swapping in (False, True):
                    for name, body, url in targets:
                        before = _our_swaps(ours) if name == "streamtrain" else _lit_swaps(flag)
                        if swapping and name == "LitServe":
                            flag.touch()
                        publishing = swapping and name == "streamtrain"
                        with (
                            _publishing(publisher, args.swap_every) if publishing else nullcontext()
                        ):
                            result = run_load(url, bodies[body], seconds=args.seconds, **load)
                        flag.unlink(missing_ok=True)
                        after = _our_swaps(ours) if name == "streamtrain" else _lit_swaps(flag)
                        rows.append(Row(name, body, swapping, after - before, result))
        finally:
            server.terminate()
            server.join(10)
            publisher.close()
        fresh = None
        if not args.skip_freshness:
            fresh = measure_freshness(broker.bootstrap_servers, args.fresh_rate, args.fresh_seconds)

    print(
        f"model=mlp 32->{args.hidden}x2->10, torch threads 1, engine={args.engine}, "
        f"load: {generator_name(args.threads, args.connections, args.seconds)}, "
        f"one 32-float sample per request, swap every {args.swap_every:g} s in swap rows"
    )
    print(report(rows))
    if fresh is not None:
        print(fresh.describe())


def report(rows: list[Row]) -> str:
    """A Markdown table; ratios are to LitServe's row with the same swap setting."""
    peer = {r.swapping: r for r in rows if r.server == "LitServe"}
    lines = [
        "| server | body | swaps | req/s | p50 ms | p99 ms | errors | req/s ÷ LitServe "
        "| p99 ÷ LitServe |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = peer.get(r.swapping)
        ratio = f"{r.load.rate / base.load.rate:.2f}" if base and base.load.rate else "-"
        p99 = f"{r.load.p99_ms / base.load.p99_ms:.2f}" if base and base.load.p99_ms else "-"
        swaps = f"{r.swaps} in {r.load.seconds:.0f} s" if r.swapping else str(r.swaps)
        lines.append(
            f"| {r.server} | {r.body} | {swaps} | {r.load.rate:,.0f} | {r.load.p50_ms:.2f} "
            f"| {r.load.p99_ms:.2f} | {r.load.errors} | {ratio} | {p99} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
