"""`streamtrain demo --labels delayed` end to end: served rows are logged, their labels come
later, the join pairs them, the trainer learns from the joined samples and the server swaps
to what it learned; and the run leaves no process behind."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from streamtrain.broker import free_port
from streamtrain.demo.demo_process import DemoProcess, alive, processes_mentioning
from streamtrain.demo.scrape import Scrape, ScrapeError, scrape
from tests.integration.process_output import AWAIT_S

# The demo's own run, counted from its first status line (after its processes started): at
# load 25 one run's trainer began learning 19 s into it, so 25 s left a few for the version to
# move after joining began. This test keeps the demo's stop by itself at --duration
# (test_demo stops it with Ctrl-C).
DURATION = 40
JOINED = "streamtrain_join_emitted_samples_total"


def _scrape_or_none(url: str) -> Scrape | None:
    try:
        return scrape(url, timeout=5.0)
    except ScrapeError:
        return None


def test_delayed_labels_demo_joins_trains_and_swaps(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["--labels", "delayed", "--duration", str(DURATION)]
    args += ["--port", str(free_port()), "--run-dir", str(run_dir)]
    with DemoProcess(args) as demo:
        # Above the demo's own start-up bound (its children answer within 120 s, after its
        # broker's start): that bound, not this wait, is what a slow start-up must fail.
        join_url = demo.wait_for(r"^join metrics: +(\S+)", timeout=AWAIT_S).group(1)
        server_url = demo.wait_for(r"^server metrics: +(\S+)", timeout=5).group(1)
        # Real progress, read from the processes' own /metrics while the demo runs: samples
        # joined, then a served version newer than the one live when joining had started.
        # Watched until the demo stops itself (its DURATION starts after its start-up, which
        # this window once counted: a loaded run ended the watch before its trainer learned).
        deadline = time.monotonic() + AWAIT_S
        joined, version_then, version_now = 0.0, None, None
        while time.monotonic() < deadline and demo.process.poll() is None:
            join, server = _scrape_or_none(join_url), _scrape_or_none(server_url)
            version = server.value("streamtrain_serve_model_version") if server else None
            if join is not None and (joined := join.value(JOINED, outcome="joined") or 0.0) > 0:
                version_then = version_then or version
                version_now = version
                if version_then and version_now and version_now > version_then:
                    break
            time.sleep(0.5)
        assert joined > 0, f"no sample joined while the demo ran:\n{demo.output}"
        assert version_then and version_now and version_now > version_then, (
            f"the served version did not move past {version_then} after joining began:\n"
            f"{demo.output}"
        )
        pids = demo.pids()
        assert set(pids) == {"broker", "server", "trainer", "join", "producer"}
        code = demo.wait(timeout=DURATION + 60)
    output = demo.output
    assert code == 0, output
    summary = re.search(r"joined samples: ([\d,]+); label delay p50 ([\d.]+) s", output)
    assert summary, output
    assert int(summary.group(1).replace(",", "")) > 0
    # The application delays labels 0.5-3 s; a loaded machine adds its own latency on top.
    assert 0.5 <= float(summary.group(2)) <= 5.0, summary.group(0)
    assert re.search(r"served version: (\d+) first -> (\d+) last \(advancing\)", output), output
    # Beyond the bootstrap: the trainer learned samples that only the join could have written.
    status = json.loads((run_dir / "app-status.json").read_text())
    trained = re.search(r"samples trained: ([\d,]+)", output)
    assert trained, output
    assert int(trained.group(1).replace(",", "")) > status["bootstrap_samples"]
    assert status["requests"] > 0 and status["requests_failed"] == 0, status
    assert "every process stopped cleanly" in output
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert processes_mentioning(str(run_dir)) == []
