"""The process group a trainer rank belongs to, and which partitions each rank reads.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
every worker's environment; :meth:`RankGroup.from_environment` reads them (``env://``, through
a store namespaced to the attempt: :mod:`streamtrain.distributed.attempt_store`). Without them
(or with a world of 1) there is no group and the trainer is exactly the single process it always
was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from streamtrain.distributed.attempt_store import join_attempt

# A collective waits this long for a lagging rank before failing the group (and torchrun
# restarting it): a rank blocked on a slow broker or a checkpoint write must not look dead.
_COLLECTIVE_TIMEOUT = timedelta(minutes=10)


class PartitionShareError(ValueError):
    """More ranks than partitions: some rank would read nothing, forever."""


@dataclass(frozen=True)
class RankGroup:
    """This process's place in an initialised torch.distributed group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @staticmethod
    def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
        env = os.environ if environ is None else environ
        return int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env

    @classmethod
    def from_environment(cls, device: torch.device) -> RankGroup | None:
        """Join the group torchrun described in the environment; None for a single process.

        The backend follows the training device: NCCL for CUDA, gloo for CPU. A CUDA rank
        trains on ``cuda:<LOCAL_RANK>`` (one GPU per process).
        """
        if not cls.launched_by_torchrun():
            return None
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            join_attempt(backend, _COLLECTIVE_TIMEOUT)
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            backend=backend,
        )

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def assign_partitions(partitions: Sequence[int], rank: int, world_size: int) -> tuple[int, ...]:
    """The partitions rank ``rank`` of ``world_size`` reads: the i-th smallest goes to rank
    ``i % world_size``. Disjoint, covering, and the same on every rank and every restart.

    >>> assign_partitions([0, 1, 2, 3, 4], 1, 2)
    (1, 3)
    >>> assign_partitions([0], 1, 2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamtrain.distributed.group.PartitionShareError: 2 trainer ranks but the samples topic ...
    """
    ordered = sorted(set(partitions))
    if world_size > len(ordered):
        raise PartitionShareError(
            f"{world_size} trainer ranks but the samples topic has {len(ordered)} "
            f"partition(s): every rank needs at least one; launch at most {len(ordered)} ranks "
            "or add partitions to the topic"
        )
    return tuple(p for i, p in enumerate(ordered) if i % world_size == rank)
