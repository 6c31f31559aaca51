"""The real trainer and server /metrics during a demo run: the catalogue is there, and moves."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from kafka import KafkaProducer

from streamtrain.broker import free_port
from streamtrain.config import TopicSettings
from streamtrain.demo.demo_process import DemoProcess, alive
from streamtrain.demo.plan import infer_body
from streamtrain.demo.scrape import Scrape, scrape
from tests.integration.process_output import AWAIT_S

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
TRAINER_MOVERS = ("streamtrain_train_optimizer_updates_total", "streamtrain_train_samples_total")
SERVER_MOVERS = ("streamtrain_serve_swaps_total", "streamtrain_serve_requests_total")


_CATALOGUE = """
import json, sys
from streamtrain import metrics
registry = getattr(metrics, sys.argv[1])
# The text format has no info type: an info family is scraped as a gauge named <name>_info.
print(json.dumps({
    m.name + ("_info" if m.type == "info" else ""): bool(m.samples) for m in registry.collect()
}))
"""


def _catalogue(registry: str) -> dict[str, bool]:
    """Family name -> whether it has samples before any label is used (unlabelled ones do).

    Read in a fresh interpreter: this process's registries carry whatever earlier in-process
    tests counted (a rejected snapshot, say), which the demo's processes never saw.
    """
    found = subprocess.run(
        [sys.executable, "-c", _CATALOGUE, registry],
        capture_output=True,
        text=True,
        check=True,
        timeout=240,  # a hang's bound, not a loaded machine's
    )
    catalogue = json.loads(found.stdout)
    assert isinstance(catalogue, dict) and catalogue, found.stderr
    return catalogue


# A request's deadline against the demo's processes: a hang's bound only. They run niced
# beside the suite on two cores, and scrape()'s default (2 s) is a Prometheus-like budget.
HTTP_S = 60.0


def _moved(before: Scrape, after: Scrape, names: tuple[str, ...]) -> bool:
    return all(after.total(n) > before.total(n) for n in names)


def _scrape_until(url: str, done: object, timeout: float) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        result = scrape(url, HTTP_S)
        if done(result):  # type: ignore[operator]
            return result
        assert time.monotonic() < deadline, f"{url} did not get there in {timeout} s"
        time.sleep(0.25)


def _check_catalogue(result: Scrape, registry: str, touched: tuple[str, ...]) -> None:
    expected = _catalogue(registry)
    missing = sorted(set(expected) - set(result.families))
    assert missing == [], f"families missing from the scrape: {missing}"
    for name, always in expected.items():
        if always or name in touched:
            assert result.sample_counts[name] > 0, f"{name} exported no sample"
    # Besides streamtrain's own: prometheus_client's standard process_* and python_* collectors.
    standard = ("process_", "python_")
    assert [n for n in result.families if not n.startswith(("streamtrain_", *standard))] == []
    assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= set(result.families)


def test_live_metrics_cover_the_catalogue_and_counters_move(tmp_path: Path) -> None:
    args = ["--port", str(free_port()), "--run-dir", str(tmp_path / "run"), "--rate", "1000"]
    with DemoProcess(args) as demo:
        # A hang's bound (the demo runs until stopped), above the demo's own start-up bound
        # (120 s): at load 27, 90 s covered two runs' start-up and their first 8-12 s, in which
        # the trainer had learned nothing yet.
        demo.wait_for(r"first snapshot live", timeout=AWAIT_S)
        text = demo.output
        trainer_url = re.search(r"trainer metrics: (\S+)", text).group(1)  # type: ignore[union-attr]
        server_url = re.search(r"server metrics: +(\S+)", text).group(1)  # type: ignore[union-attr]
        infer_url = re.search(r"infer endpoint: +POST (\S+)", text).group(1)  # type: ignore[union-attr]
        bootstrap = re.search(r"^broker: (\S+) \(pid", text, re.M).group(1)  # type: ignore[union-attr]

        trainer_first, server_first = scrape(trainer_url, HTTP_S), scrape(server_url, HTTP_S)
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send(TopicSettings().samples, b"this is not a sample").get(timeout=HTTP_S)
        producer.close()
        response = httpx.post(infer_url, json=infer_body([0.0] * 16, (16,)), timeout=HTTP_S)
        assert response.status_code == 200, response.text

        trainer_second = _scrape_until(
            trainer_url,
            lambda s: (
                s.total("streamtrain_ingest_rejected_records_total") >= 1
                and _moved(trainer_first, s, TRAINER_MOVERS)
            ),
            timeout=AWAIT_S,
        )
        server_second = _scrape_until(
            server_url, lambda s: _moved(server_first, s, SERVER_MOVERS), timeout=AWAIT_S
        )
        assert (
            trainer_second.value("streamtrain_ingest_rejected_records_total", reason="undecodable")
            == 1.0
        )
        assert server_second.value("streamtrain_serve_requests_total", outcome="ok")
        assert (
            (server_second.value("streamtrain_serve_model_version") or 0)
            >= (server_first.value("streamtrain_serve_model_version") or 0)
            > 0
        )

        _check_catalogue(
            trainer_second,
            "TRAINER_REGISTRY",
            touched=(
                "streamtrain_ingest_rejected_records",
                "streamtrain_ingest_records",
                "streamtrain_ingest_consumer_lag_records",
            ),
        )
        _check_catalogue(server_second, "SERVER_REGISTRY", touched=("streamtrain_serve_requests",))
        # docs/metrics.md is part of the source tree: a missing file fails, never skips.
        documented = DOCS.read_text()
        scraped = set(trainer_second.families) | set(server_second.families)
        # prometheus_client adds an `<counter/histogram>_created` gauge to each; not ours.
        scraped = {
            n
            for n in scraped
            if n.removesuffix("_created") not in scraped or not n.endswith("_created")
        }
        # process_* and python_* are documented as a group (docs/metrics.md, "Both").
        ours = {n for n in scraped if n.startswith("streamtrain_")}
        assert sorted(n for n in ours if n not in documented) == []
        assert "`process_*`" in documented and "`python_*`" in documented

        pids = demo.pids()
        demo.signal(signal.SIGINT)  # what Ctrl-C at a terminal sends
        code = demo.wait(timeout=40)
    assert code == 0, demo.output
    assert "SIGINT received" in demo.output
    assert [name for name, pid in pids.items() if alive(pid)] == []
