"""What outage tests share: a child's output read with arrival times, and a condition wait."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ProcessOutput:
    """A process's combined stdout/stderr, read on a thread, with arrival times."""

    lines: list[tuple[float, str]] = field(default_factory=list)
    # The followed process, and whether its output has ended (EOF): set after the last line is
    # appended, so a reader that sees ``ended`` and then reads ``lines`` has every line.
    process: subprocess.Popen[str] | None = None
    ended: bool = False

    def follow(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process = process
        for line in process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
        self.ended = True

    def exit_report(self, last: int = 20) -> str:
        """How the followed process ended (its exit code) and its last ``last`` lines."""
        code: int | str = "unknown"
        if self.process is not None:
            try:
                code = self.process.wait(10)  # its output ended: it has exited or is exiting
            except subprocess.TimeoutExpired:
                code = "none (still running with its output closed)"
        tail = "\n".join(line for _, line in self.lines[-last:])
        return f"exit code {code}; its last lines:\n{tail}"

    def since(self, start: float) -> list[str]:
        return [line for at, line in self.lines if at >= start]

    def between(self, start: float, end: float) -> list[str]:
        return [line for at, line in self.lines if start <= at <= end]

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


# The default deadline of a condition wait: most waits are on a child's start-up (imports,
# settings, the broker) or its first steps, 5-30 s here niced at load 10-15; CI's machine was
# ~1.5x slower and more loaded (a CLI start-up took 13 s there). A deadline only reports a
# hang, so it is wide; a test that bounds a behaviour's time measures it itself.
AWAIT_S = 240.0
# The deadline of one request to a process under test (an HTTP GET or POST, a scrape) made
# inside a condition wait or between its steps: a hang's bound only. A timed-out request raises
# out of the wait and fails the test; a niced server on a loaded machine can be off the CPU for
# seconds (5 s was the usual deadline).
REQUEST_S = 60.0


def await_condition(condition: Callable[[], bool], what: str, timeout: float = AWAIT_S) -> float:
    """Wait for ``condition``; returns the time it became true (monotonic)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # poll interval of a condition wait
    return time.monotonic()
