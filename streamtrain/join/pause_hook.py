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

and then sleeps (``pause_switch.PAUSE_S``, long past any test's timeout) instead of going
on. The
``STREAMTRAIN_TEST_`` prefix is the test suite's own (``config_report.OTHER_PREFIXES``); no
setting or document offers it to users. The phases, in the order a write passes them:

* ``written``: the partition's state is in ``<file>.tmp``, fsynced, not renamed over the
  previous state file;
* ``replaced``: renamed into place (the next partition of the same checkpoint not written yet,
  and the group's offsets not committed).
"""

from __future__ import annotations

from streamtrain.pause_switch import MARKER_ENV, PauseSwitch

PAUSE_ENV = "STREAMTRAIN_TEST_PAUSE_IN_JOIN_CHECKPOINT"
PHASES = ("written", "replaced")
SWITCH = PauseSwitch(PAUSE_ENV, PHASES, "min resolved")
__all__ = ["MARKER_ENV", "PAUSE_ENV", "PHASES", "SWITCH", "pause_point"]


def pause_point(phase: str, partition: int, resolved: int) -> None:
    """Pause here when the test suite asked for ``phase`` (module docstring)."""
    SWITCH.pause_at(phase, resolved, f"{partition} {resolved}")
