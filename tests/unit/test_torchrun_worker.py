"""What a rank needs to survive torchrun restarts: a store namespace of its own per attempt, and
a life no longer than its agent's.

The store test replays what torchrun's shared agent store does across a restart with real gloo
ranks: attempt 0 forms and its ranks die; attempt 1's rank 1 starts alone and must wait for the
new rank 0, not dial the dead one from attempt 0's leftover keys.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from streamtrain.distributed.attempt_store import SharedStoreRestartError, attempt_prefix

SHARED_ONE_AGENT = {
    "TORCHELASTIC_USE_AGENT_STORE": "True",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "4",
    "TORCHELASTIC_MAX_RESTARTS": "3",
}

RANK_SCRIPT = textwrap.dedent(
    """
    from datetime import timedelta
    import torch, torch.distributed as dist
    from streamtrain.distributed.attempt_store import join_attempt
    join_attempt("gloo", timedelta(seconds=120))
    total = torch.tensor([dist.get_rank() + 1])
    dist.all_reduce(total)
    print("sum", int(total))
    dist.destroy_process_group()
    """
)


def test_each_restart_of_one_agent_gets_its_own_namespace() -> None:
    first = attempt_prefix({**SHARED_ONE_AGENT, "TORCHELASTIC_RESTART_COUNT": "0"})
    second = attempt_prefix({**SHARED_ONE_AGENT, "TORCHELASTIC_RESTART_COUNT": "1"})
    assert first is not None and second is not None and first != second


def test_a_fresh_store_per_attempt_needs_no_namespace() -> None:
    assert attempt_prefix({**SHARED_ONE_AGENT, "TORCHELASTIC_USE_AGENT_STORE": "False"}) is None


def test_restarts_over_several_agents_sharing_a_store_are_refused() -> None:
    hosts = {**SHARED_ONE_AGENT, "LOCAL_WORLD_SIZE": "2"}
    with pytest.raises(SharedStoreRestartError, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        attempt_prefix(hosts)
    assert attempt_prefix({**hosts, "TORCHELASTIC_MAX_RESTARTS": "0"}) is not None


def _rank(rank: int, attempt: int, port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.getcwd(),
        "OMP_NUM_THREADS": "1",
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": str(attempt),
        "TORCHELASTIC_MAX_RESTARTS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-c", RANK_SCRIPT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    return output


def test_a_restarted_rank_waits_for_its_new_peer_not_the_dead_one() -> None:
    # the agent's store: one for every attempt, as torchrun's c10d rendezvous keeps it
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=120))
    first = [_rank(r, 0, store.port) for r in (0, 1)]
    assert all("sum 3" in _finish(p) for p in first)  # attempt 0 formed, then its ranks died
    keys_left = store.num_keys()

    late = _rank(1, 1, store.port)
    deadline = time.monotonic() + 120
    while store.num_keys() == keys_left and late.poll() is None:
        assert time.monotonic() < deadline, "attempt 1's rank 1 never reached the store"
        time.sleep(0.05)
    # rank 1 has published its address: were it reading attempt 0's keys it would now be
    # dialling the dead rank 0 and fail; instead it waits for the new one
    early = _rank(0, 1, store.port)
    assert "sum 3" in _finish(early)
    assert "sum 3" in _finish(late)


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _agent_with_rank(tied: bool) -> tuple[subprocess.Popen[str], int]:
    """A stand-in agent that starts one rank in a session of its own, as torchrun does."""
    rank = (
        "from streamtrain.distributed.agent_lifetime import die_with_agent; "
        f"{'die_with_agent(); ' if tied else ''}"
        "import signal; print('ready', flush=True); signal.pause()"
    )
    agent = (
        "import subprocess, sys; "
        f"p = subprocess.Popen([sys.executable, '-c', {rank!r}], start_new_session=True, "
        "stdout=subprocess.PIPE, text=True); "
        "p.stdout.readline(); print(p.pid, flush=True); sys.stdin.read()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", agent],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def _gone_within(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# An OS skip: the parent-death signal exists only on Linux (hides no broken install).
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_rank_dies_with_its_agent() -> None:
    agent, rank = _agent_with_rank(tied=True)
    agent.kill()
    agent.communicate(timeout=30)
    assert _gone_within(rank, 30), f"rank {rank} outlived its agent"


# The same OS skip as the test above, whose control this is.
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_an_untied_rank_would_outlive_its_agent() -> None:
    """The control: without die_with_agent the same rank is orphaned, so the test above can
    fail."""
    agent, rank = _agent_with_rank(tied=False)
    agent.kill()
    agent.communicate(timeout=30)
    try:
        assert not _gone_within(rank, 1.0)
    finally:
        os.kill(rank, signal.SIGKILL)
