"""Per-rank files of a checkpoint whose model differs between ranks (row-wise sharded tables).

With a ``row_wise`` table every rank holds other rows and other optimizer rows, so the one
checkpoint cut (:mod:`streamtrain.distributed.lockstep`) holds each rank's own model and
optimizer files: rank 0's at the top of ``step-S/`` as in any checkpoint, rank ``r``'s in
``step-S/rank-<r>/``. ``meta.json``, written last by rank 0, lists every rank's files with their
sha256, so the commit (the rename of the directory) covers all of them or none.

1. Rank ``r`` > 0 writes its files into ``<root>/.shard-step-<S>-rank-<r>/`` (fsynced) and
   hands their digests to rank 0 (a collective: it returns only once every rank has written).
2. Rank 0 moves each staging directory into its temporary checkpoint directory as
   ``rank-<r>/``, records the digests in ``meta.json`` and commits.
3. A staging directory left by a crash is removed by the next save or load (never while its
   step is being committed).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.optim import Optimizer

from streamtrain.checkpoint import components as comp
from streamtrain.checkpoint.files import fsync_dir, tensors_to_bytes, write_durable

SHARD_FILES = (comp.MODEL_FILE, comp.OPTIMIZER_TENSORS, comp.OPTIMIZER_JSON)
STAGING_PREFIX = ".shard-"
_RANK_FILE = re.compile(
    r"^rank-([1-9][0-9]{0,5})/(model\.safetensors|optimizer\.safetensors|optimizer\.json)$"
)
_DIGEST_BYTES = 32


def shard_file(rank: int, name: str) -> str:
    """Where rank ``rank``'s copy of ``name`` lives inside a checkpoint directory."""
    return name if rank == 0 else f"rank-{rank}/{name}"


def is_rank_file(name: str) -> bool:
    """Whether ``name`` (a key of ``meta.json``'s files) is a rank's own file."""
    return _RANK_FILE.match(name) is not None


def staging_dir(root: Path, step: int, rank: int) -> Path:
    return root / f"{STAGING_PREFIX}step-{step:012d}-rank-{rank}"


def stage_shard(
    root: Path, step: int, rank: int, model: nn.Module, optimizer: Optimizer
) -> dict[str, str]:
    """Write rank ``rank``'s model and optimizer files for step ``step`` into its staging
    directory, durably; return each file's sha256 by name."""
    opt_tensors, opt_json = comp.encode_optimizer(optimizer)
    files = {
        comp.MODEL_FILE: tensors_to_bytes(comp.model_tensors(model), "model weights"),
        comp.OPTIMIZER_TENSORS: tensors_to_bytes(opt_tensors, "optimizer state"),
        comp.OPTIMIZER_JSON: opt_json,
    }
    staging = staging_dir(root, step, rank)
    if staging.exists():  # a crashed attempt at the same step
        for entry in staging.iterdir():
            entry.unlink()
        staging.rmdir()
    staging.mkdir()
    digests = {name: write_durable(staging, name, data) for name, data in files.items()}
    fsync_dir(staging)
    fsync_dir(root)
    return digests


def digests_to_tensor(digests: dict[str, str]) -> torch.Tensor:
    """The digests of :data:`SHARD_FILES` as ``uint8 [files, 32]`` (to travel by collective)."""
    return torch.tensor(
        [list(bytes.fromhex(digests[name])) for name in SHARD_FILES], dtype=torch.uint8
    )


def tensor_to_digests(rank: int, packed: torch.Tensor) -> dict[str, str]:
    """Rank ``rank``'s digests as ``meta.json`` keys (``rank-<r>/<file>``) and hex values."""
    rows = packed.reshape(len(SHARD_FILES), _DIGEST_BYTES).tolist()
    return {
        shard_file(rank, name): bytes(row).hex()
        for name, row in zip(SHARD_FILES, rows, strict=True)
    }
