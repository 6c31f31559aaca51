"""A group of child processes that start together, are watched together and stop together.

Stopping follows one order, and the order is what guarantees that no process is left behind:

1. every child still running gets SIGTERM (in reverse start order, all at once, so they shut
   down in parallel);
2. each is waited for until one shared deadline (``stop_timeout`` seconds);
3. any child still running then gets SIGKILL;
4. every child is reaped (``wait()``), so none lingers as a zombie.

Children run in their own session, so a Ctrl-C at the terminal reaches only the parent, which
then stops them in this order; and each child asks the kernel for SIGTERM should the parent die
without stopping them (``PR_SET_PDEATHSIG``), even by ``kill -9``.

The demo's broker runs in a session of its own too (``EmbeddedBroker(own_session=True)``). On
Linux with autogroup scheduling (most desktops, and this project's shared CI machine) a session
is a scheduling group of its own, at nice 0: with the children in new sessions and the broker
left in the demo's, a niced demo (a test beside the soak in ``.ci/run``) had its broker starved
while its children ran: its trainer waited 33 s for its first record, and trainer and server
outlived the 10-s stop waiting on the broker. Every process of a demo is now scheduled alike.
(Keeping all of them in the demo's session instead, niced like it, was tried: beside the soak's
nice-0 processes their stop then took more than 10 s of wall time.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM the child if its parent dies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Child:
    """One started child: its name, process and log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    may_finish: bool = False
    """True when exiting 0 on its own is normal (a producer that sent its count)."""
    killed: bool = False
    """True when it ignored SIGTERM and was killed."""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def failed(self) -> bool:
        """Exited by itself in a way that is not normal for it."""
        code = self.process.poll()
        return code is not None and not (code == 0 and self.may_finish)

    def tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)


@dataclass(frozen=True)
class StopReport:
    """How each child ended: its exit code and whether it had to be killed."""

    exit_codes: dict[str, int]
    killed: tuple[str, ...]

    @property
    def clean(self) -> bool:
        """Nobody killed, and each exited 0 or by the SIGTERM it was sent (a CLI that keeps
        Python's default SIGTERM handling ends that way, which is a normal stop)."""
        stopped = (0, -signal.SIGTERM)
        return not self.killed and all(code in stopped for code in self.exit_codes.values())


class ProcessGroup:
    """Start children with their output in log files; stop and reap all of them on exit.

    >>> import sys, tempfile
    >>> with ProcessGroup(Path(tempfile.mkdtemp()), stop_timeout=5) as group:
    ...     child = group.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    ...     group.failed() is None
    True
    >>> child.returncode == -15
    True
    """

    def __init__(self, log_dir: Path, stop_timeout: float = 10.0) -> None:
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        self.report: StopReport | None = None

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        may_finish: bool = False,
    ) -> Child:
        """Start ``argv`` with stdout and stderr in ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log_path, may_finish=may_finish)
        self.children.append(child)
        return child

    def failed(self) -> Child | None:
        """The first child that exited when it should not have, if any."""
        return next((c for c in self.children if c.failed()), None)

    def stop(self) -> StopReport:
        """SIGTERM, wait (bounded), SIGKILL, reap: see the module docstring. Idempotent."""
        running = [c for c in reversed(self.children) if c.process.poll() is None]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.killed = True
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
        for child in self.children:
            child.process.wait()
        self.report = StopReport(
            exit_codes={c.name: c.process.returncode for c in self.children},
            killed=tuple(c.name for c in self.children if c.killed),
        )
        return self.report

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
