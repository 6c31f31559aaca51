"""A pause inside a checkpoint write, for the test suite only.

``kill -9`` at a random moment lands inside a checkpoint write only by chance (a write takes
milliseconds, the steps between writes much longer). The recovery tests need kills *inside*
each phase of :meth:`~streamtrain.checkpoint.store.CheckpointStore.save`, so the writer calls
:func:`pause_point` at each phase boundary. It does nothing unless the test suite sets

* ``STREAMTRAIN_TEST_PAUSE_IN_CHECKPOINT=<phase>[:<min step>]``: at ``<phase>`` of the first
  checkpoint write whose step is at least ``<min step>`` (0 when left out), and
* ``STREAMTRAIN_TEST_PAUSE_MARKER=<path>``: the file written (the step, as text) when the
  pause begins, so the test knows the writer stands there and can kill it,

and then sleeps (``pause_switch.PAUSE_S``, long past any test's timeout) instead of going
on. The
``STREAMTRAIN_TEST_`` prefix is the test suite's own (the unknown-variable warning of the
settings passes it over, ``config_report.OTHER_PREFIXES``); no setting or document offers it to
users. The phases, in the order a write passes them:

* ``files``: the first data file (the model) is written into the ``.tmp-…`` directory, the
  other files and ``meta.json`` are not;
* ``meta``: every file and ``meta.json`` are written, the temporary directory is not renamed;
* ``committed``: renamed to ``step-…`` (the commit), older checkpoints not pruned yet.
"""

from __future__ import annotations

from streamtrain.pause_switch import MARKER_ENV, PauseSwitch

PAUSE_ENV = "STREAMTRAIN_TEST_PAUSE_IN_CHECKPOINT"
PHASES = ("files", "meta", "committed")
SWITCH = PauseSwitch(PAUSE_ENV, PHASES, "min step")
__all__ = ["MARKER_ENV", "PAUSE_ENV", "PHASES", "SWITCH", "pause_point"]


def pause_point(phase: str, step: int) -> None:
    """Pause here when the test suite asked for ``phase`` (module docstring)."""
    SWITCH.pause_at(phase, step, str(step))
