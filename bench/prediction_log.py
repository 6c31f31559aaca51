"""What the prediction log costs a serving worker: the same server with it off and on.

Starts the embedded broker and two serving workers in their own processes (the bench/serve.py
model: MLP 32 → 256 → 256 → 10, one torch thread each, direct engine), one with
``serve.prediction_log`` off and one with it on, then drives them in alternating rows with the
same load generator and body (bench/loadgen.py: one 32-float sample per JSON request), so
drifting machine load hits both alike. For the logging server it reads back from its own
/metrics how many records the broker acknowledged and how many were dropped, and the median
produce latency and record size.

Then, in this process, the two parts of that cost apart: the request path's share
(``ServedModel.identify`` and ``ServedModel.log``, what an infer request runs for the log)
timed per call before the writer thread starts, then the CPU the writer spends per record
while it sends what those calls queued.

Run: ``.venv/bin/python bench/prediction_log.py`` (``--help``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from loadgen import LoadResult, generator_name, run_load
from prometheus_client.parser import text_string_to_metric_families
from serve import Publisher, _probe, _wait_ready, json_body

from streamtrain.broker import EmbeddedBroker, free_port
from streamtrain.builders.server import build_worker
from streamtrain.config import load_settings

HIDDEN = 256


def _serve(overrides: dict[str, Any]) -> None:
    build_worker(load_settings(overrides=overrides)).run()


def _model() -> dict[str, Any]:
    return {
        "name": "mlp",
        "task": "multiclass",
        "input_shape": [32],
        "num_classes": 10,
        "params": {"hidden_sizes": [HIDDEN, HIDDEN]},
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _log_metrics(url: str) -> dict[str, float]:
    """Logged and dropped records, and the medians of produce latency and record size."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {"dropped": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name == "streamtrain_serve_prediction_log_records":
            out["logged"] = next(s.value for s in family.samples if s.name.endswith("_total"))
        elif family.name == "streamtrain_serve_prediction_log_dropped_records":
            out["dropped"] += sum(s.value for s in family.samples if s.name.endswith("_total"))
        elif family.name in (
            "streamtrain_serve_prediction_log_produce_seconds",
            "streamtrain_serve_prediction_log_record_size_bytes",
        ):
            out[family.name] = _median(family.samples)
    return out


def _median(samples: Any) -> float:
    buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket")]
    total = buckets[-1][1]
    return next((le for le, count in buckets if count >= total / 2), float("nan"))


def _in_process_costs(bootstrap: str, topic: str, calls: int) -> tuple[float, float, float]:
    """Microseconds per request of the request path's hooks (``identify`` + ``log``) with the
    log on and off, then per record of the writer (its thread and librdkafka's, all the
    process's CPU while it drains what the calls queued)."""
    import torch

    from streamtrain.builders.server import build_prediction_log, build_slot
    from streamtrain.sample.spec import spec_for_model
    from streamtrain.serve.protocol.bodies import InferRequest, ModelIO
    from streamtrain.serve.protocol.dataplane import ServedModel
    from streamtrain.serve.weights.inference import Prediction
    from streamtrain.serve.weights.slot import WeightsInfo
    from streamtrain.snapshot.manifest import SnapshotHeader

    overrides = {
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {"predictions": topic},
        "model": _model(),
        "serve": {"prediction_log": True, "prediction_log_queue": calls},
    }
    settings = load_settings(overrides=overrides)
    spec = spec_for_model(settings.model)
    slot = build_slot(settings.model, torch.device("cpu"))
    log = build_prediction_log(settings, spec)
    assert log is not None
    request = InferRequest(None, np.ones((1, 32), np.float32), ("probabilities",), frozenset())
    prediction = Prediction(
        WeightsInfo(SnapshotHeader(1, "bench")),
        {"probabilities": np.full((1, 10), 0.1, np.float32)},
    )
    hooks = []
    for prediction_log in (log, None):  # the writer is not started yet: hooks alone
        served = ServedModel(
            slot=slot,
            engine=None,  # type: ignore[arg-type]
            io=ModelIO.for_spec(spec),
            name="m",
            prediction_log=prediction_log,
        )
        started = time.perf_counter()
        for _ in range(calls):
            served.log(served.identify(request), prediction)
        hooks.append((time.perf_counter() - started) / calls * 1e6)
    assert log.held == calls
    cpu = time.process_time()
    log.start()
    while log.held:
        time.sleep(0.005)
    writer = (time.process_time() - cpu) / calls * 1e6
    log.close()
    return hooks[0], hooks[1], writer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per row")
    parser.add_argument("--rounds", type=int, default=2, help="off/on row pairs")
    parser.add_argument("--threads", type=int, default=2, help="load generator threads")
    parser.add_argument("--connections", type=int, default=8, help="requests in flight")
    parser.add_argument("--calls", type=int, default=50_000, help="in-process hook calls")
    args = parser.parse_args()
    load = {"threads": args.threads, "connections": args.connections}
    body = json_body(np.random.default_rng(0).normal(size=32).astype(np.float32))

    with EmbeddedBroker() as broker:
        broker.create_topics(["bench.snapshots", "bench.predictions", "bench.hook"])
        servers: dict[str, tuple[str, Any]] = {}
        publisher = None
        try:
            for name, logging in (("off", False), ("on", True)):
                port = free_port()
                overrides: dict[str, Any] = {
                    "kafka": {"bootstrap_servers": broker.bootstrap_servers},
                    "topics": {"snapshots": "bench.snapshots", "predictions": "bench.predictions"},
                    "model": _model(),
                    "serve": {
                        "port": port,
                        "model_name": "bench",
                        "torch_threads": 1,
                        "engine": "direct",
                        "prediction_log": logging,
                    },
                }
                if publisher is None:
                    publisher = Publisher(load_settings(overrides=overrides))
                    publisher.publish()
                process = multiprocessing.get_context("spawn").Process(
                    target=_serve, args=(overrides,), daemon=True
                )
                process.start()
                servers[name] = (f"http://127.0.0.1:{port}", process)
            for url, process in servers.values():
                _wait_ready(f"{url}/v2/health/ready", process.is_alive)
                _probe(f"{url}/v2/models/bench/infer", body)
                run_load(f"{url}/v2/models/bench/infer", body, seconds=2.0, **load)
            on_url = servers["on"][0]
            before = _log_metrics(on_url)
            rows: dict[str, list[LoadResult]] = {"off": [], "on": []}
            cpu: dict[str, list[float]] = {"off": [0.0, 0.0], "on": [0.0, 0.0]}
            for _ in range(args.rounds):
                for name, (url, process) in servers.items():
                    infer = f"{url}/v2/models/bench/infer"
                    pids = (process.pid, broker.pid)
                    start = [_cpu_s(pid) for pid in pids]
                    rows[name].append(run_load(infer, body, seconds=args.seconds, **load))
                    for i, pid in enumerate(pids):
                        cpu[name][i] += _cpu_s(pid) - start[i]
            time.sleep(1.0)  # the last acknowledgements (linger 5 ms, loopback)
            after = _log_metrics(on_url)
        finally:
            for _, process in servers.values():
                process.terminate()
                process.join(10)
            if publisher is not None:
                publisher.close()
        hook_on, hook_off, writer = _in_process_costs(
            broker.bootstrap_servers, "bench.hook", args.calls
        )

    print(
        f"model=mlp 32->{HIDDEN}x2->10, torch threads 1, engine=direct, load: "
        f"{generator_name(args.threads, args.connections, args.seconds)}, one 32-float sample "
        f"per JSON request, {args.rounds} alternating rounds"
    )
    print("| prediction log | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|")
    for name, results in rows.items():
        for r in results:
            print(f"| {name} | {r.rate:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} |")
    off = sum(r.requests for r in rows["off"]) / sum(r.seconds for r in rows["off"])
    on = sum(r.requests for r in rows["on"]) / sum(r.seconds for r in rows["on"])
    served = sum(r.requests for r in rows["on"])
    logged = after["logged"] - before["logged"]
    dropped = after["dropped"] - before["dropped"]
    print(f"throughput on/off: {on / off:.3f} ({on:,.0f} vs {off:,.0f} req/s)")
    for name in ("off", "on"):
        requests = sum(r.requests for r in rows[name])
        server_us, broker_us = (1e6 * c / max(1, requests) for c in cpu[name])
        print(
            f"CPU per request, log {name}: server process {server_us:.0f} µs, "
            f"broker {broker_us:.0f} µs"
        )
    print(
        f"logging server: {served:,} requests answered 2xx in the measured rows, {logged:,.0f} "
        f"records acknowledged, {dropped:,.0f} dropped; median produce latency <= "
        f"{after['streamtrain_serve_prediction_log_produce_seconds'] * 1000:g} ms, median "
        f"record <= {after['streamtrain_serve_prediction_log_record_size_bytes']:g} bytes"
    )
    print(
        f"in process, {args.calls:,} requests of one row: request path (identify + log) "
        f"{hook_on:.2f} µs with the log on, {hook_off:.2f} µs off; writer {writer:.1f} µs CPU "
        "per record (encode, send, acknowledgement; librdkafka's threads included)"
    )


if __name__ == "__main__":
    main()
