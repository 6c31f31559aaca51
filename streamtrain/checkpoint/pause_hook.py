"""A pause inside a checkpoint write, for the test suite only.

``kill -9`` at a random moment lands inside a checkpoint write only by chance (a write takes
milliseconds, the steps between writes much longer). The recovery tests need kills *inside*
each phase of :meth:`~streamtrain.checkpoint.store.CheckpointStore.save`, so the writer calls
:func:`pause_point` at each phase boundary. It does nothing unless the test suite sets

* ``STREAMTRAIN_TEST_PAUSE_IN_CHECKPOINT=<phase>[:<min step>]``: at ``<phase>`` of the first
  checkpoint write whose step is at least ``<min step>`` (0 when left out), and
* ``STREAMTRAIN_TEST_PAUSE_MARKER=<path>``: the file written (the step, as text) when the
  pause begins, so the test knows the writer stands there and can kill it,

and then sleeps (:data:`PAUSE_S`, long past any test's timeout) instead of going on. The
``STREAMTRAIN_TEST_`` prefix is the test suite's own (the unknown-variable warning of the
settings passes it over, ``config_report.OTHER_PREFIXES``); no setting or document offers it to
users. The phases, in the order a write passes them:

* ``files``: the first data file (the model) is written into the ``.tmp-…`` directory, the
  other files and ``meta.json`` are not;
* ``meta``: every file and ``meta.json`` are written, the temporary directory is not renamed;
* ``committed``: renamed to ``step-…`` (the commit), older checkpoints not pruned yet.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from streamtrain.ascii_int import parse_ascii_int

PAUSE_ENV = "STREAMTRAIN_TEST_PAUSE_IN_CHECKPOINT"
MARKER_ENV = "STREAMTRAIN_TEST_PAUSE_MARKER"
PHASES = ("files", "meta", "committed")
PAUSE_S = 600.0


def pause_point(phase: str, step: int) -> None:
    """Pause here when the test suite asked for ``phase`` at ``step`` (module docstring)."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    name, _, minimum = wanted.partition(":")
    first = parse_ascii_int(minimum or "0")
    if name not in PHASES or first is None:
        raise ValueError(
            f"{PAUSE_ENV}={wanted!r}: expected one of {', '.join(PHASES)}, optionally "
            "followed by :<min step> (a test-only switch)"
        )
    if name != phase or step < first:
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:  # written whole, then renamed: a test never reads it half written
        partial = Path(f"{marker}.partial")
        partial.write_text(str(step))
        os.replace(partial, marker)
    time.sleep(PAUSE_S)
