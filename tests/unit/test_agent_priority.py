"""A rank in the session torchrun made for it keeps the agent's niceness (autogroup)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="no autogroup scheduling on this kernel"
)

# The agent: its own session at autogroup nice 19 (as `.ci/run` beside the soak), starting a
# "rank" in a new session as torchrun does; the rank prints its group before and after.
AGENT = """
import os, subprocess, sys
os.setsid()
open("/proc/self/autogroup", "w").write("19")
rank = (
    "from pathlib import Path; from streamtrain.distributed.agent_lifetime import "
    "keep_agent_priority; g = Path('/proc/self/autogroup'); print(g.read_text().split()[-1]); "
    "keep_agent_priority(); print(g.read_text().split()[-1])"
)
sys.exit(subprocess.run([sys.executable, "-c", rank], start_new_session=True).returncode)
"""


def test_a_rank_in_a_session_of_its_own_takes_the_agents_nice_value() -> None:
    done = subprocess.run(
        [sys.executable, "-c", AGENT], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "19"], done.stdout
