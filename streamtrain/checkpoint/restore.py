"""Read one checkpoint directory fully into memory, validate it, then apply it.

Reading and applying are separate so a checkpoint is checked end to end (checksums, JSON
types, tensor names and shapes against the live objects) before any live object changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from streamtrain.checkpoint import components as comp
from streamtrain.checkpoint.files import bytes_to_tensors, read_verified
from streamtrain.checkpoint.meta import LOG_MARKS, META_FILE, CheckpointMeta, parse_meta
from streamtrain.checkpoint.rng import RNG_FILE, check_rng, restore_rng
from streamtrain.checkpoint.shards import is_rank_file, shard_file
from streamtrain.checkpoint.state import CheckpointError, TrainerState

REQUIRED_FILES = (comp.MODEL_FILE, comp.OPTIMIZER_TENSORS, comp.OPTIMIZER_JSON, RNG_FILE)
KNOWN_FILES = frozenset((*REQUIRED_FILES, comp.SCHEDULER_JSON, comp.SCHEDULER_TENSORS))


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read and validated in memory, not yet applied to any live object."""

    path: Path
    meta: CheckpointMeta
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: dict[str, torch.Tensor]

    def trainer_state(self) -> TrainerState:
        meta = self.meta
        return TrainerState(
            step=meta.step,
            samples_seen=meta.samples_seen,
            run_id=meta.run_id,
            offsets=meta.int_offsets(),
            model_settings=meta.model_settings,
            data_watermark=meta.data_watermark,
            extra={k: v for k, v in meta.extra.items() if k != LOG_MARKS},
            marks=meta.marks(),
        )


def read_meta(path: Path, step: int) -> CheckpointMeta:
    """Parse ``path/meta.json`` and check it agrees with the directory it is in."""
    meta_path = path / META_FILE
    try:
        raw = meta_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{meta_path}: missing or unreadable ({exc})") from exc
    meta = parse_meta(raw, meta_path)
    if meta.step != step:
        raise CheckpointError(f"{meta_path}: records step {meta.step}, directory says {step}")
    missing = [name for name in REQUIRED_FILES if name not in meta.files]
    if missing:
        raise CheckpointError(f"{meta_path}: lists no checksum for {missing}")
    unknown = sorted(n for n in set(meta.files) - KNOWN_FILES if not is_rank_file(n))
    if unknown:
        raise CheckpointError(f"{meta_path}: lists unknown files {unknown}")
    return meta


def read_checkpoint(
    path: Path,
    step: int,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    rank: int = 0,
) -> LoadedCheckpoint:
    """Read, checksum and validate every file of the checkpoint in ``path`` (``rank``'s own
    model and optimizer files: :mod:`.shards`)."""
    meta = read_meta(path, step)
    own = {comp.MODEL_FILE, comp.OPTIMIZER_TENSORS, comp.OPTIMIZER_JSON}

    def data(name: str) -> bytes:
        stored = shard_file(rank, name) if name in own else name
        if stored not in meta.files:
            raise CheckpointError(f"{path}: holds no {stored} for trainer rank {rank}")
        return read_verified(path, stored, meta.files[stored])

    def tensors(name: str) -> dict[str, torch.Tensor]:
        stored = shard_file(rank, name) if name in own else name
        return bytes_to_tensors(data(name), path / stored) if stored in meta.files else {}

    weights = tensors(comp.MODEL_FILE)
    comp.check_model(weights, model, path / comp.MODEL_FILE)
    opt_state = comp.decode_optimizer(
        data(comp.OPTIMIZER_JSON),
        tensors(comp.OPTIMIZER_TENSORS),
        optimizer,
        path / comp.OPTIMIZER_JSON,
    )
    sched_state: dict[str, Any] | None = None
    if scheduler is not None:
        if comp.SCHEDULER_JSON not in meta.files:
            raise CheckpointError(
                f"{path}: holds no LR scheduler state, but a scheduler was given to restore"
            )
        sched_state = comp.decode_scheduler(
            data(comp.SCHEDULER_JSON),
            tensors(comp.SCHEDULER_TENSORS),
            scheduler,
            path / comp.SCHEDULER_JSON,
        )
    rng = tensors(RNG_FILE)
    check_rng(rng, meta.rng, str(path / RNG_FILE))
    return LoadedCheckpoint(path, meta, weights, opt_state, sched_state, rng)


def apply_checkpoint(
    loaded: LoadedCheckpoint,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    *,
    restore_rng_state: bool,
) -> None:
    """Load a validated checkpoint into the live objects.

    1. Optimizer first: torch checks the groups before changing anything, so a rejection here
       still leaves every live object untouched.
    2. Model weights (names, shapes and dtypes already match), copied onto the parameters'
       device; tied parameters stay tied because both names copy into the same storage.
    3. LR scheduler, then the RNGs, last so nothing after them draws a random number.
    """
    try:
        optimizer.load_state_dict(loaded.optimizer)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{loaded.path / comp.OPTIMIZER_JSON}: rejected by the optimizer: {exc}"
        ) from exc
    model.load_state_dict(loaded.model, strict=True)
    if scheduler is not None and loaded.scheduler is not None:
        scheduler.load_state_dict(loaded.scheduler)
    if restore_rng_state:
        restore_rng(loaded.rng, loaded.meta.rng)
