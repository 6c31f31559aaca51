"""Drive ``streamtrain demo`` as a subprocess and read what it prints, for tests and scripts.

>>> with DemoProcess(["--duration", "20", "--port", "0"]) as demo:  # doctest: +SKIP
...     curl = demo.wait_for(r"^curl .*", timeout=60).group(0)
...     code = demo.wait(timeout=60)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from streamtrain.ascii_int import parse_ascii_int

PID_LINE = re.compile(r"^(\w+): .*\bpid ([0-9]+)\b|^broker: .*\(pid ([0-9]+)\)")


class DemoProcess:
    """``python -m streamtrain.cli demo ARGS``, its output collected line by line."""

    def __init__(self, args: Sequence[str], cwd: Path | None = None) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def process(self) -> subprocess.Popen[str]:
        assert self._process is not None, "start() first"
        return self._process

    def start(self) -> DemoProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "streamtrain.cli", "demo", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=self.cwd,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name="demo-output")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern``; AssertionError on timeout or exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                finished = self._reader is not None and not self._reader.is_alive()
                left = deadline - time.monotonic()
                if finished or left <= 0:
                    why = "exited" if finished else f"printed nothing in {timeout:.0f} s"
                    raise AssertionError(
                        f"demo {why} matching {pattern!r}; output so far:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(min(left, 0.5))

    def pids(self) -> dict[str, int]:
        """The PIDs the demo reported, by process name (broker, server, trainer, producer)."""
        found: dict[str, int] = {}
        with self._changed:
            for line in self.lines:
                match = PID_LINE.search(line)
                if match:
                    name = match.group(1) or "broker"
                    found[name] = int(match.group(2) or match.group(3))
        return found

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def __enter__(self) -> DemoProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A failed test still stops the demo the way a user would, then hard if it hangs.
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def alive(pid: int) -> bool:
    """True while a process with this pid exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (strays of a run dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        pid = parse_ascii_int(entry.name)
        if pid is None:
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in cmdline and alive(pid):
                found.append(pid)
    return found
