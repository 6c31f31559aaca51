"""What the trainer hands to a checkpoint and gets back from one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streamtrain.sample.record_mark import RecordMark


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, or one on disk that is torn, corrupt or mismatched.

    The message names the file and what is wrong with it.
    """


@dataclass
class TrainerState:
    """The trainer's position in the stream, saved next to the weights it belongs to.

    ``offsets`` maps each assigned partition to the next offset the model has *not* learned
    from; restoring a checkpoint and seeking there gives exactly-once learning. ``marks`` holds
    the fingerprint of the record just before each offset, checked against the log on restore
    (a replaced log is an offset reset, not a silent skip); it is stored in ``meta.json`` under
    ``extra.log_marks``, so checkpoints without it (older ones) still load, unchecked.

    Example:
        >>> state = TrainerState(step=10, samples_seen=640, run_id="r1", offsets={0: 320},
        ...                      model_settings={"name": "mlp"})
        >>> state.offsets[0]
        320
    """

    step: int
    samples_seen: int
    run_id: str
    offsets: dict[int, int]
    model_settings: dict[str, Any]
    data_watermark: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    marks: dict[int, RecordMark] = field(default_factory=dict)


class WorldSizeMismatch(CheckpointError):
    """A checkpoint written by a different number of trainer ranks than are running now."""


def check_world_size(state: TrainerState, world_size: int, where: str) -> None:
    """Refuse to resume ``state`` (from ``where``) with another number of ranks.

    Each rank's offsets cover its own partitions and the batches of a step were paired by rank:
    resuming the same stream on another layout would not replay the same steps.
    """
    written = int(state.extra.get("world_size", 1))
    if written != world_size:
        raise WorldSizeMismatch(
            f"checkpoint {where} was written by {written} trainer rank(s) but {world_size} "
            f"are running: restart with {written} rank(s) (torchrun --nproc-per-node), or "
            "start a new run with an empty --checkpoint-dir"
        )
