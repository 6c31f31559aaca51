"""The key-value store one attempt of a torchrun job forms its process group through.

torchrun's c10d rendezvous hosts one TCPStore in the agent for the job's whole life, and by
default (``TORCHELASTIC_USE_AGENT_STORE=True``) every attempt's workers use it directly, with no
per-attempt namespace (pytorch/pytorch#135712). The bootstrap keys a killed attempt wrote (each
gloo rank's listening address, NCCL's unique id) stay there, and a restarted rank that reads
them before its new peer has overwritten them dials a dead process: ``Gloo connectFullMesh
failed ... Connection refused``, or a mesh that never forms. Whether it reads the old or the new
key is a race, hence an intermittent failure. This module gives every attempt keys of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta

import torch.distributed as dist
from torch.distributed.distributed_c10d import PrefixStore
from torch.distributed.rendezvous import rendezvous

# torchrun's switch that gives every attempt a fresh store (global rank 0 hosts it)
FRESH_STORE_SWITCH = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


class SharedStoreRestartError(ValueError):
    """Restarts over several agents that share one store: no attempt name all ranks agree on."""


def attempt_prefix(environ: Mapping[str, str]) -> str | None:
    """The namespace of this attempt's keys in the agent's store; None if the store is fresh.

    1. Store not shared with the agent (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``): rank 0
       hosts a new store on a new port every attempt; nothing is left over, no prefix.
    2. Shared, one agent started every rank (one host, ``streamtrain train --nproc``): the
       agent's ``TORCHELASTIC_RESTART_COUNT`` is the same for all its ranks and new for every
       restart, so ``streamtrain/attempt-<count>`` is this attempt's alone.
    3. Shared, several agents, restarts allowed: each agent counts its own restarts (an agent
       whose workers did not fail restarts them without counting), so no name is common to
       one attempt; refused, with the switch that makes it safe.

    >>> attempt_prefix({"TORCHELASTIC_USE_AGENT_STORE": "True", "WORLD_SIZE": "2",
    ...                 "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "1"})
    'streamtrain/attempt-1'
    """
    if environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    one_agent = environ.get("LOCAL_WORLD_SIZE") == environ.get("WORLD_SIZE")
    if not one_agent and int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        raise SharedStoreRestartError(
            "torchrun restarts (--max-restarts > 0) of a job spread over several hosts "
            "would re-form the group from the killed attempt's keys in torchrun's shared "
            f"store (pytorch/pytorch#135712): export {FRESH_STORE_SWITCH}=1 on every host "
            "before torchrun, or run with --max-restarts 0"
        )
    return f"streamtrain/attempt-{environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def join_attempt(backend: str, timeout: timedelta) -> None:
    """Initialise the default process group from torchrun's ``env://`` settings, through a
    store namespaced to this attempt (:func:`attempt_prefix`)."""
    prefix = attempt_prefix(os.environ)
    if prefix is None:
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
        return
    # the agent's store, connected to exactly as init_process_group's env:// would
    store, rank, world_size = next(rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    dist.init_process_group(
        backend,
        store=PrefixStore(prefix, store),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )
