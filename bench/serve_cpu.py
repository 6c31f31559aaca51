"""Server CPU per request of one or more source trees, side by side: the robust serving figure
on a shared machine.

For each tree, a serving worker in its own process with that tree first on ``PYTHONPATH``
(bench/serve_trees.py's worker: MLP 32 → 256 → 256 → 10, one torch thread, direct engine, fixed
weights, no Kafka). All servers start once; then, round after round (the order flipping every
round, so drifting machine load hits all alike), each is loaded alone by bench/loadgen.py
(``wrk`` when installed) posting one OIP JSON row per request, and its user+sys CPU seconds
over the run (``/proc/<pid>/stat``, every thread of the process) are divided by the requests
answered. Load on the client side costs the client, not the figure.

    git archive b5aa1f2 | tar -x -C /tmp/base
    .venv/bin/python bench/serve_cpu.py /tmp/base .@one-write . --rounds 4 --seconds 6
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proc_cpu import process_cpu_s


def _child(http: str | None, stalls: str | None) -> None:
    from serve_trees import build_worker

    worker = build_worker(http=http)
    if stalls:
        from loop_stalls import watch

        watch(worker, Path(stalls))
    print(worker.port, flush=True)
    worker.run()


def _start(server: str, stalls: Path | None) -> tuple[subprocess.Popen[str], str]:
    from serve import _wait_ready

    tree, _, http = server.partition("@")
    env = {**os.environ, "PYTHONPATH": f"{Path(tree).resolve()}{os.pathsep}{Path(__file__).parent}"}
    command = [sys.executable, __file__, "--child", http, str(stalls or "")]
    process = subprocess.Popen(command, env=env, cwd=tree, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url = f"http://127.0.0.1:{process.stdout.readline().strip()}"
    _wait_ready(f"{url}/v2/health/ready", lambda: process.poll() is None)
    return process, url + "/v2/models/bench/infer"


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2] or None, sys.argv[3] or None)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "servers",
        nargs="+",
        help="source trees (their streamtrain/ serves), each optionally @HTTP: the worker's "
        "http protocol (infer-route, one-write, httptools, h11), e.g. .@one-write",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0, help="load per run")
    parser.add_argument("--threads", type=int, default=2, help="load generator threads")
    parser.add_argument("--connections", type=int, default=8, help="requests in flight")
    parser.add_argument("--body", choices=["JSON", "binary"], default="JSON")
    parser.add_argument(
        "--stalls",
        action="store_true",
        help="record each server's event-loop stalls and garbage collections and print them "
        "per round (bench/loop_stalls.py; its timer adds ~1%% CPU)",
    )
    args = parser.parse_args()
    # Here, not at the top: the child imports only the tree it serves.
    import numpy as np
    from loadgen import generator_name, run_load
    from loop_stalls import read, report
    from serve import binary_body, json_body

    values = np.random.default_rng(0).normal(size=32).astype(np.float32)
    body = json_body(values) if args.body == "JSON" else binary_body(values)
    trees = list(args.servers)
    stall_dir = Path(tempfile.mkdtemp(prefix="serve-cpu-stalls-")) if args.stalls else None
    stalls = {t: stall_dir / f"{i}.json" if stall_dir else None for i, t in enumerate(trees)}
    servers = [_start(tree, stalls[tree]) for tree in trees]
    cpu: dict[str, list[float]] = {tree: [] for tree in trees}
    rates: dict[str, list[float]] = {tree: [] for tree in trees}
    print(f"load: {generator_name(args.threads, args.connections, args.seconds)}, {args.body}")
    try:
        for _, url in servers:  # warm-up, not reported
            run_load(url, body, threads=args.threads, connections=args.connections, seconds=2)
        order = list(zip(trees, servers, strict=True))
        for i in range(args.rounds):
            for tree, (process, url) in order if i % 2 == 0 else order[::-1]:
                before = process_cpu_s(process.pid)
                stall_path = stalls[tree]
                recorded, since = read(stall_path) if stall_path else {}, time.time()
                result = run_load(
                    url,
                    body,
                    threads=args.threads,
                    connections=args.connections,
                    seconds=args.seconds,
                )
                used = process_cpu_s(process.pid) - before
                if result.errors or not result.requests:
                    raise SystemExit(f"{tree}: {result.errors} errors, {result.requests} answers")
                cpu[tree].append(used / result.requests * 1e6)
                rates[tree].append(result.rate)
                print(
                    f"round {i + 1}: {tree}: {cpu[tree][-1]:.0f} µs CPU/request, "
                    f"{result.rate:.0f} req/s, p99 {result.p99_ms:.2f} ms",
                    flush=True,
                )
                if stall_path is not None:
                    time.sleep(0.6)  # the server writes its records twice a second
                    print(f"  {report(stall_path, since, time.time() - 0.6, recorded)}", flush=True)
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(30)
        if stall_dir is not None:
            shutil.rmtree(stall_dir, ignore_errors=True)
    first = statistics.median(cpu[trees[0]])
    for tree in trees:
        median = statistics.median(cpu[tree])
        print(
            f"{tree}: median {median:.0f} µs CPU/request ({min(cpu[tree]):.0f}-"
            f"{max(cpu[tree]):.0f}), {statistics.median(rates[tree]):.0f} req/s, "
            f"÷ first {median / first:.2f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
