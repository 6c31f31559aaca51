"""Durable trainer state: atomic safetensors + JSON checkpoints, restored newest-valid-first."""

from streamtrain.checkpoint.state import (
    CheckpointError,
    TrainerState,
    WorldSizeMismatch,
    check_world_size,
)
from streamtrain.checkpoint.store import CheckpointStore

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "TrainerState",
    "WorldSizeMismatch",
    "check_world_size",
]
