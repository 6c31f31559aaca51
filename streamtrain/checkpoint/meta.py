"""``meta.json``: the typed, validated description of one checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.checkpoint.state import CheckpointError
from streamtrain.sample.record_mark import RecordMark, marks_from_json

FORMAT_VERSION = 1
META_FILE = "meta.json"
# In ``extra`` (not a field of its own): streamtrain versions from before it read the
# checkpoint still, and a checkpoint without it loads here with its positions unchecked.
LOG_MARKS = "log_marks"
TOPIC_ID = "topic_id"  # the samples topic's id (KIP-516) where the broker reports one

_Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_NonNegative = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NumpyRngState(_Strict):
    """``numpy.random.get_state()`` (legacy tuple form) as JSON."""

    bit_generator: str
    keys: Annotated[
        list[Annotated[int, Field(ge=0, le=0xFFFFFFFF)]], Field(min_length=624, max_length=624)
    ]
    pos: int
    has_gauss: int
    cached_gaussian: float


class PythonRngState(_Strict):
    """``random.getstate()`` as JSON."""

    version: int
    internal: list[int]
    gauss_next: float | None


class RngMeta(_Strict):
    """RNG states that fit JSON; torch's byte-tensor states live in ``rng.safetensors``."""

    numpy: NumpyRngState
    python: PythonRngState
    cuda_devices: _NonNegative


class CheckpointMeta(_Strict):
    """Everything in ``meta.json``. ``files`` maps each other file to its sha256 hex digest."""

    format: int
    step: _NonNegative
    samples_seen: _NonNegative
    run_id: str
    model_settings: dict[str, Any]
    offsets: dict[str, _NonNegative]
    data_watermark: float | None
    created_at: float
    rng: RngMeta
    extra: dict[str, Any]
    files: dict[str, _Sha256]

    @field_validator("offsets")
    @classmethod
    def _partition_keys(cls, offsets: dict[str, int]) -> dict[str, int]:
        for key in offsets:
            if parse_ascii_int(key) is None:
                raise ValueError(f"partition {key!r} is not a non-negative integer")
        return offsets

    @field_validator("extra")
    @classmethod
    def _log_marks(cls, extra: dict[str, Any]) -> dict[str, Any]:
        if LOG_MARKS in extra:
            marks_from_json(extra[LOG_MARKS])  # ValueError names what is wrong
        return extra

    def marks(self) -> dict[int, RecordMark]:
        """The fingerprints of the records before the offsets; empty in older checkpoints."""
        return marks_from_json(self.extra.get(LOG_MARKS, {}))

    def int_offsets(self) -> dict[int, int]:
        """Offsets with the partition keys JSON forced to strings turned back into ints."""
        return {int(k): v for k, v in self.offsets.items()}


def parse_meta(raw: bytes, path: Path) -> CheckpointMeta:
    """Decode and validate ``meta.json``; every failure names ``path`` and the problem."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the checkpoint is torn") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("format")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r}, but this streamtrain reads format "
            f"{FORMAT_VERSION}; restore it with the streamtrain version that wrote it, or start "
            "from an empty checkpoint directory"
        )
    try:
        return CheckpointMeta.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise CheckpointError(f"{path}: invalid checkpoint metadata: {problems}") from exc
