"""`streamtrain demo` end to end: it learns, serves, prints a curl that works, and cleans up."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from streamtrain.broker import free_port
from streamtrain.demo.demo_process import DemoProcess, alive, processes_mentioning
from tests.integration.process_output import AWAIT_S, REQUEST_S, await_condition

# The demo runs until Ctrl-C here, which the test sends once the served version has advanced
# and the accuracy risen. A fixed --duration bounded the learning by the wall clock: at load
# 24-27 the first snapshot went live 29 s after the status lines began, past a 15-s run. Its
# stop by itself at --duration is test_demo_delayed's (and CI's `make demo`).
ACCURACY = re.compile(r"^t=.*\bacc ([\d.]+) .*\btrained [1-9]")
SERVED = re.compile(r"^t=.*\bserved v(\d+)")


def _learned_and_advanced(output: str) -> bool:
    """A status line shows a higher accuracy than the first one with an accuracy, and a newer
    served version than the first one with a version: what the summary's "(rising)" and
    "(advancing)" compare (its first figures may come from a refresh between two lines)."""
    lines = output.splitlines()
    accuracies = [(i, float(m.group(1))) for i, x in enumerate(lines) if (m := ACCURACY.search(x))]
    versions = {i: int(m.group(1)) for i, x in enumerate(lines) if (m := SERVED.search(x))}
    if not accuracies or not versions:
        return False
    first_accuracy, first_version = accuracies[0][1], next(iter(versions.values()))
    return any(a > first_accuracy and versions.get(i, 0) > first_version for i, a in accuracies)


def _post_until_served(argv: list[str], timeout: float) -> dict[str, object]:
    """POST the curl example's body to its URL until the first snapshot is live."""
    url = argv[4]
    body = argv[argv.index("-d") + 1]
    headers = {"Content-Type": "application/json"}
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.post(url, content=body, headers=headers, timeout=REQUEST_S)
        if response.status_code == 200:
            doc: dict[str, object] = response.json()
            return doc
        assert response.status_code == 503, response.text  # only "no weights yet" may repeat
        assert time.monotonic() < deadline, f"no snapshot went live in {timeout} s"
        time.sleep(0.2)


def test_demo_learns_serves_and_leaves_no_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["--port", str(free_port()), "--run-dir", str(run_dir)]
    with DemoProcess(args) as demo:
        # Above the demo's own start-up bound (its children answer within 120 s, after its
        # broker's start): at load 27 a start-up took most of 90 s.
        curl = demo.wait_for(r"^curl -s -X POST .*", timeout=AWAIT_S).group(0)
        argv = shlex.split(curl)
        doc = _post_until_served(argv, timeout=AWAIT_S)
        outputs = {o["name"]: o for o in doc["outputs"]}  # type: ignore[attr-defined]
        assert outputs["predicted_class"]["data"][0] in (0, 1)
        assert int(str(doc["model_version"])) >= 1
        if shutil.which("curl"):  # the exact printed command, through a shell
            shell = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=10)
            names = [o["name"] for o in json.loads(shell.stdout)["outputs"]]
            assert "predicted_class" in names
        pids = demo.pids()
        assert set(pids) == {"broker", "server", "trainer", "producer"}
        await_condition(
            lambda: _learned_and_advanced(demo.output) or demo.process.poll() is not None,
            "a status line with a higher accuracy and a newer served version than the first",
        )
        demo.signal(signal.SIGINT)  # what Ctrl-C at a terminal sends
        code = demo.wait(timeout=60)
    output = demo.output
    assert code == 0, output
    accuracy = re.search(r"accuracy: ([\d.]+) at start -> ([\d.]+) at end \(rising\)", output)
    assert accuracy, output
    assert float(accuracy.group(2)) > float(accuracy.group(1))
    versions = re.search(r"served version: (\d+) first -> (\d+) last \(advancing\)", output)
    assert versions, output
    assert int(versions.group(2)) > int(versions.group(1))
    assert re.search(r"requests served: [1-9]", output), output
    assert "every process stopped cleanly" in output
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert processes_mentioning(str(run_dir)) == []
    assert (run_dir / "trainer.log").read_text().count("stopped (") == 1
