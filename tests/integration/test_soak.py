"""Issue 32: the demo's pipeline keeps up with its producer past half a million records.

The embedded broker's fetches slow with the number of record batches in a partition; with
the demo's old producer and fetch settings (5 ms batches, 10 ms fetch waits) the trainer
stopped receiving records after ~175,000-300,000 samples at 2,000/s (docs/operations.md, "The
embedded broker"). This runs ``streamtrain demo`` at 4,000 samples/s for 130 s (~520,000
records, past that point on any machine measured) and checks, every 10 s after a warm-up:

- intake >= 90% of the produce rate, both taken from the trainer's own counters over the
  window: learned = delta of ``streamtrain_train_samples_total``, produced = learned + delta
  of the consumer lag (what reached the log), so a slow machine that produces less is not
  held to a rate it never produced;
- served data age <= 5 s;

and that the demo's summary reports no stall and it exits 0. About 2.5 minutes: the only test
here that runs the pipeline long enough to meet the broker's limit (marked ``soak``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from streamtrain.broker import free_port
from streamtrain.demo.demo_process import DemoProcess
from streamtrain.demo.scrape import Scrape, ScrapeError, scrape

pytestmark = [pytest.mark.integration, pytest.mark.soak]

RATE = 4000
SECONDS = 130
WINDOW_S = 10.0
WARMUP_S = 20.0
MIN_INTAKE = 0.90
MAX_AGE_S = 5.0


@dataclass(frozen=True)
class Point:
    t: float
    trained: float
    lag: float
    age: float | None


def _read(client: httpx.Client, url: str) -> Scrape | None:
    try:
        return scrape(url, client=client)
    except ScrapeError:
        return None


def _sample(client: httpx.Client, trainer: str, server: str, t: float) -> Point | None:
    t_scrape, s_scrape = _read(client, trainer), _read(client, server)
    if t_scrape is None or s_scrape is None:
        return None
    version = s_scrape.value("streamtrain_serve_model_version")
    return Point(
        t=t,
        trained=t_scrape.total("streamtrain_train_samples_total"),
        lag=t_scrape.total("streamtrain_ingest_consumer_lag_records"),
        age=s_scrape.value("streamtrain_serve_data_age_seconds") if version else None,
    )


def _problems(points: list[Point]) -> list[str]:
    started = next((p.t for p in points if p.trained > 0), None)
    assert started is not None, "the trainer learned nothing"
    steady = [p for p in points if p.t >= started + WARMUP_S]
    assert len(steady) >= 3, f"too few samples after the warm-up: {steady}"
    found = []
    for before, after in itertools.pairwise(steady):
        learned = after.trained - before.trained
        produced = learned + (after.lag - before.lag)
        if produced > 0 and learned < MIN_INTAKE * produced:
            found.append(
                f"t={after.t:.0f} s: learned {learned:,.0f} of {produced:,.0f} records "
                f"produced in {after.t - before.t:.0f} s"
            )
    for p in steady:
        if p.age is None or p.age > MAX_AGE_S:
            found.append(f"t={p.t:.0f} s: served data age {p.age} s")
    return found


def test_the_demo_keeps_up_past_half_a_million_records(tmp_path: Path) -> None:
    args = [
        *("--duration", str(SECONDS), "--rate", str(RATE)),
        *("--port", str(free_port()), "--run-dir", str(tmp_path / "run")),
    ]
    points: list[Point] = []
    with DemoProcess(args) as demo, httpx.Client(timeout=5.0) as client:
        trainer = demo.wait_for(r"^trainer metrics: (\S+)", timeout=120).group(1)
        server = demo.wait_for(r"^server metrics:\s+(\S+)", timeout=10).group(1)
        start = time.monotonic()
        # Sampling cadence, not synchronisation: each point is whatever the counters say then.
        while demo.process.poll() is None and time.monotonic() - start < SECONDS + 30:
            point = _sample(client, trainer, server, time.monotonic() - start)
            if point is not None:
                points.append(point)
            time.sleep(WINDOW_S)
        code = demo.wait(timeout=60)
    output = demo.output
    problems = _problems(points)
    last = points[-1]
    reached = f"{last.trained + last.lag:,.0f} records reached the log"
    assert not problems, f"{reached}; " + "; ".join(problems) + "\n" + output[-3000:]
    assert "stalled" not in output and "older than" not in output, output[-3000:]
    assert code == 0, output[-3000:]
