"""Test-only pauses inside state writes, so a test can ``kill -9`` a process *inside* one.

A kill at a random moment lands inside a checkpoint write only by chance (a write takes
milliseconds, the work between writes much longer). The recovery tests of the trainer's
checkpoint (:mod:`streamtrain.checkpoint.pause_hook`) and of the join's state files
(:mod:`streamtrain.join.pause_hook`) need kills inside named phases of those writes, so the
writers call :meth:`PauseSwitch.pause_at` at each phase boundary. It does nothing unless the
test suite sets the switch's variable to ``<phase>[:<least count>]`` and, optionally,
:data:`MARKER_ENV` to a file the pause writes when it begins (so the test knows the writer
stands there); it then sleeps :data:`PAUSE_S`, long past any test's timeout.

The ``STREAMTRAIN_TEST_`` prefix is the test suite's own (the unknown-variable warning of the
settings passes it over, ``config_report.OTHER_PREFIXES``); no setting or document offers it to
users.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from streamtrain.ascii_int import parse_ascii_int

MARKER_ENV = "STREAMTRAIN_TEST_PAUSE_MARKER"
PAUSE_S = 600.0


@dataclass(frozen=True)
class PauseSwitch:
    """One writer's pause: ``env`` names the phase (and least count) to pause at."""

    env: str
    phases: tuple[str, ...]
    counts: str  # what the number after ":" counts, for the error message

    def pause_at(self, phase: str, count: int, marker_text: str) -> None:
        """Pause here when the test suite asked for ``phase`` at ``count`` or later."""
        wanted = os.environ.get(self.env)
        if not wanted:
            return
        name, _, minimum = wanted.partition(":")
        least = parse_ascii_int(minimum or "0")
        if name not in self.phases or least is None:
            raise ValueError(
                f"{self.env}={wanted!r}: expected one of {', '.join(self.phases)}, optionally "
                f"followed by :<{self.counts}> (a test-only switch)"
            )
        if name != phase or count < least:
            return
        marker = os.environ.get(MARKER_ENV)
        if marker:  # written whole, then renamed: a test never reads it half written
            partial = Path(f"{marker}.partial")
            partial.write_text(marker_text)
            os.replace(partial, marker)
        time.sleep(PAUSE_S)
