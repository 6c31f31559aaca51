"""A pause inside a join checkpoint write, for the test suite only.

``kill -9`` at a random moment lands inside a join checkpoint only by chance (writing a
partition's state takes milliseconds). The exactly-once tests need kills *inside* it: between
one partition's state file and the next, and before a file's rename. ``write_state`` calls
:func:`pause_point` at those two points; it does nothing unless the test suite sets

* ``STREAMTRAIN_TEST_PAUSE_IN_JOIN_CHECKPOINT=<phase>[:<min resolved>]``: at ``<phase>`` of the
  first state file written whose partition has resolved (joined or expired) at least
  ``<min resolved>`` ids (0 when left out), and
* ``STREAMTRAIN_TEST_PAUSE_MARKER=<path>``: the file written (``<partition> <resolved>``) when
  the pause begins, so the test knows the writer stands there and can kill it,

and then sleeps (:data:`PAUSE_S`, long past any test's timeout) instead of going on. The
``STREAMTRAIN_TEST_`` prefix is the test suite's own (``config_report.OTHER_PREFIXES``); no
setting or document offers it to users. The phases, in the order a write passes them:

* ``written``: the partition's state is in ``<file>.tmp``, fsynced, not renamed over the
  previous state file;
* ``replaced``: renamed into place (the next partition of the same checkpoint not written yet,
  and the group's offsets not committed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from streamtrain.ascii_int import parse_ascii_int

PAUSE_ENV = "STREAMTRAIN_TEST_PAUSE_IN_JOIN_CHECKPOINT"
MARKER_ENV = "STREAMTRAIN_TEST_PAUSE_MARKER"
PHASES = ("written", "replaced")
PAUSE_S = 600.0


def pause_point(phase: str, partition: int, resolved: int) -> None:
    """Pause here when the test suite asked for ``phase`` (module docstring)."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    name, _, minimum = wanted.partition(":")
    least = parse_ascii_int(minimum or "0")
    if name not in PHASES or least is None:
        raise ValueError(
            f"{PAUSE_ENV}={wanted!r}: expected one of {', '.join(PHASES)}, optionally "
            "followed by :<min resolved> (a test-only switch)"
        )
    if name != phase or resolved < least:
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{partition} {resolved}")
    time.sleep(PAUSE_S)
