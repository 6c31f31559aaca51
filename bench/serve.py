"""Serving latency with and without hot swaps, side by side.

Starts the embedded broker and a serving worker (in a child process, so the load generator
does not share its interpreter), publishes a first snapshot, then drives concurrent infer
requests over loopback:

* ``steady``: no swaps;
* ``swapping``: a new snapshot of the same model published every 100 ms;

then end-to-end freshness with a real trainer and server (bench/freshness.py): how long from a
sample's production until a served prediction reflects a snapshot that learned from it.

Each phase is bounded in requests and seconds. Run: ``.venv/bin/python bench/serve.py``
(``--engine batching`` or ``direct`` to compare the engines; ``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from socket import IPPROTO_TCP, TCP_NODELAY
from typing import Any

import httpx
import torch
from freshness import measure as measure_freshness

from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.config import Settings, load_settings
from streamtrain.kafka import KafkaConnection
from streamtrain.serve.server import build_worker
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.spec import spec_for_model
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.models import build_model


@dataclass(frozen=True)
class PhaseResult:
    name: str
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    versions: int  # distinct model_version values seen in answers


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


def load(
    url: str, features: int, clients: int, max_requests: int, max_seconds: float, name: str
) -> PhaseResult:
    """``clients`` threads send one-row requests back to back until either bound is hit."""
    body = {
        "inputs": [
            {"name": "input", "shape": [1, features], "datatype": "FP32", "data": [0.5] * features}
        ]
    }
    latencies: list[float] = []
    versions: set[str] = set()
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + max_seconds

    def client() -> None:
        # TCP_NODELAY: without it the request body waits ~40 ms on the server's delayed ACK.
        transport = httpx.HTTPTransport(socket_options=[(IPPROTO_TCP, TCP_NODELAY, 1)])
        with httpx.Client(base_url=url, timeout=10, transport=transport) as http:
            while time.monotonic() < stop_at:
                with lock:
                    if len(latencies) + errors[0] >= max_requests:
                        return
                started = time.perf_counter()
                reply = http.post("/v2/models/bench/infer", json=body)
                elapsed = time.perf_counter() - started
                with lock:
                    if reply.status_code == 200:
                        latencies.append(elapsed)
                        versions.add(reply.json()["model_version"])
                    else:
                        errors[0] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return PhaseResult(
        name,
        len(latencies),
        errors[0],
        time.monotonic() - started,
        quantiles[49] * 1000,
        quantiles[98] * 1000,
        len(versions),
    )


def with_swaps(publisher: Publisher, every_s: float, run: Callable[[], PhaseResult]) -> PhaseResult:
    done = threading.Event()

    def swapper() -> None:
        while not done.wait(every_s):
            publisher.publish()

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        return run()
    finally:
        done.set()
        thread.join()


def _wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server at {url} not ready after {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["auto", "direct", "batching"], default="auto")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000, help="per phase")
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase")
    parser.add_argument("--swap-every", type=float, default=0.1, help="seconds between swaps")
    parser.add_argument("--hidden", type=int, default=256, help="MLP hidden width")
    parser.add_argument("--fresh-rate", type=float, default=1000.0, help="samples/s produced")
    parser.add_argument("--fresh-seconds", type=float, default=20.0)
    args = parser.parse_args()

    with EmbeddedBroker() as broker:
        topic = "bench.snapshots"
        broker.create_topics([topic])
        port = free_port()
        overrides: dict[str, Any] = {
            "kafka": {"bootstrap_servers": broker.bootstrap_servers},
            "topics": {"snapshots": topic},
            "model": {
                "name": "mlp",
                "task": "multiclass",
                "input_shape": [32],
                "num_classes": 10,
                "params": {"hidden_sizes": [args.hidden, args.hidden]},
            },
            "serve": {"port": port, "model_name": "bench"},
        }
        settings = load_settings(overrides=overrides)
        publisher = Publisher(settings)
        publisher.publish()
        server = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(overrides, args.engine), daemon=True
        )
        server.start()
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url)
            load(url, 32, args.clients, 200, 5.0, "warmup")
            steady = load(url, 32, args.clients, args.requests, args.seconds, "steady")
            swapping = with_swaps(
                publisher,
                args.swap_every,
                lambda: load(url, 32, args.clients, args.requests, args.seconds, "swapping"),
            )
        finally:
            server.terminate()
            server.join(10)
            publisher.close()
        fresh = measure_freshness(broker.bootstrap_servers, args.fresh_rate, args.fresh_seconds)

    print(f"engine={args.engine} clients={args.clients} model=mlp 32->{args.hidden}x2->10")
    print(
        f"{'phase':<10}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'versions':>10}"
    )
    for r in (steady, swapping):
        print(
            f"{r.name:<10}{r.requests:>10}{r.errors:>8}{r.requests / r.seconds:>9.0f}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.versions:>10}"
        )
    print(fresh.describe())


if __name__ == "__main__":
    main()
