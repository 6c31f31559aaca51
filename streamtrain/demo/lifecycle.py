"""The demo's run directory, its stop signals and how a child's exit is told.

>>> describe_exit(3), describe_exit(-9)
('exited with code 3', 'was killed by SIGKILL')
"""

from __future__ import annotations

import signal
import threading
from datetime import datetime
from pathlib import Path
from types import FrameType


class DemoError(RuntimeError):
    """The demo cannot run; the message says why and what to do."""


def prepare_run_dir(requested: Path | None) -> Path:
    """A run directory whose checkpoint folder is empty (see step 1)."""
    if requested is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        requested = Path("runs") / f"demo-{stamp}"
        suffix = 1
        while requested.exists():
            suffix += 1
            requested = Path("runs") / f"demo-{stamp}-{suffix}"
    checkpoints = requested / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise DemoError(
            f"{checkpoints} holds checkpoints of an earlier run; the demo's in-memory broker "
            "starts empty, so their offsets would point nowhere. Pass a new --run-dir (or "
            "omit it for runs/demo-<time>), or delete that folder"
        )
    requested.mkdir(parents=True, exist_ok=True)
    return requested


def describe_exit(code: int | None) -> str:
    """'exited with code 3' or 'was killed by SIGKILL' (Popen gives -N for signal N)."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class StopFlag:
    """Set by SIGINT or SIGTERM while installed; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def __enter__(self) -> StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
