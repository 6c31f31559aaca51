"""HTTP load for bench/serve.py: ``wrk`` when it is installed, else a bounded asyncio client.

Both keep ``connections`` requests in flight back to back for ``seconds`` against one URL,
with one fixed body, and report requests/s, p50/p99 latency and non-2xx answers. wrk (C, its
own threads) leaves the servers nearly all the CPU; the fallback is Python (httpx on one
event loop) and costs the machine more per request, so its figures are lower for every
server alike — compare rows of one run, never across generators. Traffic goes to the URL
given (bench/serve.py uses 127.0.0.1 only).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Body:
    content: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int  # non-2xx answers and socket errors
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def generator_name(threads: int, connections: int, seconds: float) -> str:
    if shutil.which("wrk"):
        return f"wrk -t{threads} -c{connections} -d{seconds:g}s --latency"
    return f"asyncio/httpx, {connections} connections, {seconds:g} s (wrk not installed)"


def run_load(
    url: str, body: Body, *, threads: int = 2, connections: int = 8, seconds: float = 15.0
) -> LoadResult:
    if shutil.which("wrk"):
        return _wrk(url, body, threads, connections, seconds)
    return asyncio.run(_httpx_load(url, body, connections, seconds))


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def _wrk(url: str, body: Body, threads: int, connections: int, seconds: float) -> LoadResult:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.content)}"]
    lines += [
        f"wrk.headers[{_lua_string(k.encode())}] = {_lua_string(v.encode())}"
        for k, v in body.headers.items()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "body.lua"
        script.write_text("\n".join(lines) + "\n")
        command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
        out = subprocess.run(
            [*command, "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(int(n) for n in sockets.groups()) if sockets else 0
    return LoadResult(
        requests=int(total.group(1)),
        errors=errors,
        seconds=float(total.group(2)) * scale,
        p50_ms=_wrk_latency(out, "50%"),
        p99_ms=_wrk_latency(out, "99%"),
    )


def _wrk_latency(out: str, percentile: str) -> float:
    found = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {percentile} latency in wrk's output:\n{out}")
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]


async def _httpx_load(
    url: str, body: Body, connections: int, seconds: float, max_requests: int = 200_000
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    stop_at = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < stop_at and len(latencies) + errors < max_requests:
            started = time.perf_counter()
            try:
                reply = await http.post(url, content=body.content, headers=body.headers)
                ok = reply.status_code == 200
            except httpx.TransportError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    started = time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=10) as http:
        await asyncio.gather(*(client(http) for _ in range(connections)))
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return LoadResult(
        len(latencies), errors, time.monotonic() - started, quantiles[49] * 1e3, quantiles[98] * 1e3
    )
