"""A torchrun worker never outlives the agent that started it (Linux).

torchrun starts each rank in a session of its own, so a signal to the agent's process group
does not reach the ranks, and an agent that is itself killed (``kill -9``, OOM killer) leaves
them running: orphans that hold their partitions, ports and GPU, and whose collectives wait on
peers that are gone. The kernel's parent-death signal ties each rank to its agent instead.

SIGKILL, not SIGTERM: with the agent gone nobody will restart the group, and a graceful stop
would need collectives with peers that may be dead too. Nothing is lost by it: a global
checkpoint is committed only once complete, so the next run resumes from the last one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_agent() -> bool:
    """Have the kernel SIGKILL this process when its parent exits; False where unsupported.

    1. Note the parent (the agent: torchrun starts ranks directly).
    2. ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: from now on the parent's exit kills this process.
    3. A parent that died between 1 and 2 sent no signal, and this process now has another
       parent: exit rather than run orphaned. (Comparing with pid 1 instead would be wrong:
       a torchrun that is a container's entrypoint is pid 1.) An agent that died before
       step 1, while this interpreter was starting, is not detected: call this first thing.
    """
    if not sys.platform.startswith("linux"):
        log.warning("ranks are not tied to their torchrun agent on %s", sys.platform)
        return False
    agent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
    if os.getppid() != agent:
        raise SystemExit(f"the torchrun agent (pid {agent}) that started this rank has exited")
    return True
