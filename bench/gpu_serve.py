"""Serving on CUDA: the engines' wall-time threshold, a served HTTP load, end-to-end freshness.

Run: ``python bench/gpu_serve.py --device cuda`` (bench/gpu_check.py runs it; ``--smoke`` is
its CPU dry run). Model: bench/serve.py's MLP 32 -> 256 -> 256 -> 10. Three parts, each
written to ``--report`` as soon as it is measured:

1. Engines in process on the device. ``DirectEngine`` times one pass in eight and keeps a
   running seconds-per-row estimate (on CUDA in wall time, the wait for the device included);
   a request whose rows x estimate is under ``inline_below_s`` (1 ms) runs on the event loop,
   a longer one on a worker thread. Printed: the estimate after 1-, 16- and 256-row passes and
   the path each size then takes; then 1-row requests, 8 in flight, through ``DirectEngine``
   and ``BatchingEngine`` (req/s, p50, p99).
2. HTTP: a ``streamtrain serve`` worker on the device (engine ``direct``, then ``batching``)
   under bench/loadgen.py's load, one JSON row per request, 8 connections.
3. Freshness (bench/freshness.py): a real trainer and server, both on the device (not in
   the ``--smoke`` run).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from freshness import measure as measure_freshness
from loadgen import generator_name, run_load
from serve import Publisher, _probe, _serve, _wait_ready, json_body
from serve_model import model_overrides

from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.config import load_settings
from streamtrain.sample.spec import spec_for_model
from streamtrain.serve.weights.inference import BatchingEngine, DirectEngine, Engine, head_for
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.train.models import build_model

HIDDEN = 256
FEATURES = 32


class Report:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
        self.lines += lines
        if self.path is not None:
            self.path.write_text("\n".join(self.lines) + "\n")


def _slot(device: torch.device) -> tuple[WeightSlot, Any]:
    settings = load_settings(overrides={"model": model_overrides(HIDDEN)})
    spec = spec_for_model(settings.model)
    model = build_model("mlp", spec, settings.model.params)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    slot = WeightSlot(build_model("mlp", spec, settings.model.params).to(device))
    slot.load(state, SnapshotHeader(1, "bench"))
    return slot, head_for(spec)


def threshold_rows(device: torch.device, report: Report) -> None:
    slot, head = _slot(device)
    engine = DirectEngine(slot, head, device)
    rng = np.random.default_rng(0)
    report.add(
        "| rows per pass | estimate µs/row | pass µs (estimate x rows) | path |",
        "|---:|---:|---:|---|",
    )
    for rows in (1, 16, 256):
        x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
        for _ in range(64):  # eight timed passes: the running estimate settles
            engine.run(x)
        timer = engine._timer  # the pass timer that decides inline or thread
        per_row = timer._seconds_per_row or 0.0  # the value the threshold reads
        path = "inline" if timer.inline(rows) else "thread"
        report.add(f"| {rows} | {per_row * 1e6:.1f} | {per_row * rows * 1e6:.0f} | {path} |")


async def _drive(engine: Engine, seconds: float, in_flight: int) -> tuple[int, list[float]]:
    x = np.random.default_rng(1).normal(size=(1, FEATURES)).astype(np.float32)
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            await engine.infer(x)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(in_flight)))
    return len(latencies), latencies


def engine_rows(device: torch.device, seconds: float, report: Report) -> None:
    report.add(
        "",
        "| engine (in process) | req/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    )
    slot, head = _slot(device)
    engines: dict[str, Engine] = {
        "direct": DirectEngine(slot, head, device),
        "batching (64 rows, 2 ms)": BatchingEngine(slot, head, device, 64, 0.002),
    }
    for name, engine in engines.items():
        asyncio.run(_drive(engine, 0.5, 8))  # warm-up
        count, latencies = asyncio.run(_drive(engine, seconds, 8))
        engine.close()
        q = statistics.quantiles(latencies, n=100)
        report.add(f"| {name} | {count / seconds:,.0f} | {q[49] * 1e3:.2f} | {q[98] * 1e3:.2f} |")


def http_rows(
    bootstrap: str, device: str, seconds: float, report: Report, engines: tuple[str, ...]
) -> None:
    report.add(
        "",
        f"HTTP, {generator_name(2, 8, seconds)}, one JSON row per request:",
        "",
        "| engine (HTTP worker) | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|",
    )
    body = json_body(np.random.default_rng(0).normal(size=FEATURES).astype(np.float32))
    for engine in engines:
        topic = f"gpu-serve-{engine}"
        port = free_port()
        overrides: dict[str, Any] = {
            "kafka": {"bootstrap_servers": bootstrap},
            "topics": {"snapshots": topic},
            "model": model_overrides(HIDDEN),
            "serve": {"port": port, "model_name": "bench", "torch_threads": 1, "device": device},
        }
        publisher = Publisher(load_settings(overrides=overrides))
        publisher.publish()
        server = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(overrides, engine), daemon=True
        )
        server.start()
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(f"{url}/v2/health/ready", server.is_alive, timeout_s=60)
            _probe(f"{url}/v2/models/bench/infer", body)
            run_load(f"{url}/v2/models/bench/infer", body, seconds=1.0)  # warm-up
            r = run_load(f"{url}/v2/models/bench/infer", body, seconds=seconds)
            report.add(
                f"| {engine} | {r.rate:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |"
            )
        finally:
            server.terminate()
            server.join(10)
            publisher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=5.0, help="per engine row")
    parser.add_argument("--fresh-seconds", type=float, default=10.0, help="0: no freshness run")
    parser.add_argument("--fresh-rate", type=float, default=1000.0)
    parser.add_argument("--smoke", action="store_true", help="CPU dry run: short rows")
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.fresh_seconds = 1.0, 0.0
    device = torch.device(args.device)
    torch.set_num_threads(1)
    report = Report(args.report)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    report.add(f"device {args.device} ({name}), torch {torch.__version__}, one torch thread", "")
    if device.type != "cuda":
        report.add("CUDA: skipped (no CUDA here); every row below is a CPU smoke run", "")
    threshold_rows(device, report)
    engine_rows(device, args.seconds, report)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as logs:
        # a worker process each; the smoke run starts one (the in-process rows cover direct)
        engines = ("batching",) if args.smoke else ("direct", "batching")
        http_rows(broker.bootstrap_servers, args.device, args.seconds, report, engines)
        if args.fresh_seconds <= 0:
            # two more CLI processes and their warm-up: over a minute on a loaded 2-core CI
            # machine, so the dry run leaves it to the device run and bench/serve.py
            report.add("", "freshness: not run (--fresh-seconds 0; the smoke run skips it)")
            return
        try:
            fresh = measure_freshness(
                broker.bootstrap_servers,
                args.fresh_rate,
                args.fresh_seconds,
                device=args.device,
                log_dir=Path(logs),
                start_timeout=60,
            )
        except RuntimeError as failure:
            for kind in ("train", "serve"):
                tail = (Path(logs) / f"{kind}.log").read_text().splitlines()[-15:]
                print(f"--- {kind} output (last lines) ---", *tail, sep="\n")
            raise SystemExit(f"freshness failed: {failure}") from failure
        report.add("", f"Trainer and server on {args.device}: {fresh.describe()}")


if __name__ == "__main__":
    main()
