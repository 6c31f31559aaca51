"""The demo's process group: children start, are watched, and are always stopped and reaped."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from streamtrain.demo.processes import ProcessGroup, tail

SLEEP = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"]
# Ignores SIGTERM, then says so, so the test knows the handler is installed before stopping.
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ignoring', flush=True); time.sleep(120)",
]


def _wait_for_log(path: Path, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in tail(path):
        assert time.monotonic() < deadline, f"{path} never said {text!r}"
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_stop_terminates_and_reaps_children(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, stop_timeout=5)
    child = group.start("sleeper", SLEEP)
    _wait_for_log(child.log_path, "up")
    assert group.failed() is None
    report = group.stop()
    assert report.exit_codes == {"sleeper": -signal.SIGTERM}
    assert report.clean and not report.killed
    assert _gone(child.pid)


def test_child_ignoring_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, stop_timeout=0.5)
    stubborn = group.start("stubborn", STUBBORN)
    polite = group.start("polite", SLEEP)
    _wait_for_log(stubborn.log_path, "ignoring")
    started = time.monotonic()
    report = group.stop()
    # Killed after its 0.5 s, not left to end its 120-s sleep; the margin is a loaded machine's
    # (a niced worker beside the suite can wait seconds for a core).
    assert time.monotonic() - started < 30
    assert report.killed == ("stubborn",)
    assert report.exit_codes["stubborn"] == -signal.SIGKILL
    assert report.exit_codes["polite"] == -signal.SIGTERM
    assert not report.clean
    assert _gone(stubborn.pid) and _gone(polite.pid)


def test_unexpected_exit_is_reported_with_the_log_tail(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path, stop_timeout=5) as group:
        group.start("steady", SLEEP)
        crasher = group.start(
            "crasher", [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
        )
        crasher.process.wait(10)
        failed = group.failed()
        assert failed is crasher
        assert failed.returncode == 3
        assert "boom: bad config" in failed.tail()
    assert all(c.returncode is not None for c in group.children)


def test_a_child_allowed_to_finish_is_not_a_failure(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        done = group.start("producer", [sys.executable, "-c", "pass"], may_finish=True)
        done.process.wait(10)
        assert group.failed() is None
    assert group.report is not None and group.report.clean


def test_stop_is_idempotent_and_children_run_in_their_own_session(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, stop_timeout=5)
    child = group.start("sleeper", SLEEP)
    _wait_for_log(child.log_path, "up")
    # A terminal's Ctrl-C goes to the foreground process group; children must not get it.
    assert os.getsid(child.pid) == child.pid != os.getsid(0)
    first = group.stop()
    assert group.stop() == first


def test_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert tail(tmp_path / "nope.log") == ""
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"


def test_sigint_and_sigterm_both_ask_the_demo_to_stop() -> None:
    from streamtrain.demo.lifecycle import StopFlag

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        with StopFlag() as stop:
            os.kill(os.getpid(), signum)
            assert stop.event.wait(5)
            assert stop.signal_name == signal.Signals(signum).name
        assert signal.getsignal(signum) is previous
