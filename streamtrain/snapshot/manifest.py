"""The snapshot manifest: what a published snapshot holds and how to check its bytes.

The manifest is the last record of a snapshot on the topic (see ``docs/snapshots.md``); it is
JSON, validated on receipt by :class:`SnapshotManifest` (frozen, no unknown fields), so a reader
never acts on a manifest it does not fully understand.

Example:
    >>> manifest = SnapshotManifest(
    ...     model_name="mlp", settings_hash=settings_hash({"name": "mlp"}), run_id="run-1",
    ...     version=7, created_at=0.0, data_watermark=None, offsets={0: 42},
    ...     tensors=[TensorInfo(name="w", dtype="float32", shape=[2, 2])], size_bytes=96,
    ...     sha256="0" * 64, chunk_count=1, chunk_bytes=524288, first_chunk_offset=3)
    >>> manifest.snapshot_id
    'run-1/7'
    >>> SnapshotManifest.model_validate_json(manifest.model_dump_json()) == manifest
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from streamtrain.ascii_int import parse_ascii_int

FORMAT: Literal["streamtrain.snapshot.v1"] = "streamtrain.snapshot.v1"
_HEX64 = r"^[0-9a-f]{64}$"


def settings_hash(model_settings: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a model configuration.

    Trainer and server hash the same ``model`` settings; a snapshot whose hash differs from the
    server's was trained for another architecture and is refused as ``config_mismatch``.

    >>> settings_hash({"b": 1, "a": [1, 2]}) == settings_hash({"a": [1, 2], "b": 1})
    True
    """
    canonical = json.dumps(dict(model_settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def snapshot_id(run_id: str, version: int) -> str:
    """The identity of one snapshot on the wire: ``<run_id>/<version>``."""
    return f"{run_id}/{version}"


def parse_snapshot_id(value: str) -> tuple[str, int] | None:
    """Split ``<run_id>/<version>``; None when it is not of that form."""
    run_id, sep, version = value.rpartition("/")
    number = parse_ascii_int(version)
    if not sep or not run_id or number is None:
        return None
    return run_id, number


SnapshotOrder = tuple[int, float, str]


def snapshot_order(version: int, created_at: float, run_id: str) -> SnapshotOrder:
    """The one rule deciding which of two snapshots is newer, for every reader.

    Higher ``version`` wins (a trainer resumes its step count from its checkpoint, and a new
    run continues the topic's sequence, so versions grow across runs); on equal versions the
    later ``created_at`` (the trainer's clock when it took the snapshot) wins, then the larger
    ``run_id``, so two different snapshots are never equal. Topic order plays no part: a
    running server and one started later pick the same snapshot from the same topic.

    >>> snapshot_order(8, 0.0, "new") > snapshot_order(5, 99.0, "old")
    True
    >>> snapshot_order(8, 2.0, "a") > snapshot_order(8, 1.0, "b")
    True
    """
    return (version, created_at, run_id)


@dataclass(frozen=True)
class SnapshotHeader:
    """Who a set of weights is: the identity every loader takes whole, from the manifest that
    announced it to the slot that made it live (``base_id`` / ``predecessor_id`` only for a
    delta, as in :class:`SnapshotManifest`).

    >>> SnapshotHeader(7, "run-1").snapshot_id
    'run-1/7'
    """

    version: int
    run_id: str
    data_watermark: float | None = None
    created_at: float = 0.0
    base_id: str | None = None
    predecessor_id: str | None = None

    @property
    def snapshot_id(self) -> str:
        return snapshot_id(self.run_id, self.version)

    @property
    def order(self) -> SnapshotOrder:
        """Sort key: see :func:`snapshot_order`."""
        return snapshot_order(self.version, self.created_at, self.run_id)

    @property
    def lineage(self) -> str:
        """The base this version's chain starts from: a base's own id, a delta's ``base_id``."""
        return self.base_id if self.base_id is not None else self.snapshot_id


class TensorInfo(BaseModel):
    """Name, dtype (torch name without ``torch.``, e.g. ``float32``) and shape of one tensor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    dtype: str = Field(min_length=1)
    shape: list[int]

    @field_validator("shape")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        if any(d < 0 for d in value):
            raise ValueError(f"shape {value} has a negative dimension")
        return value


def shard_snapshot_id(run_id: str, version: int, index: int, world: int) -> str:
    """The wire identity of shard ``index`` of ``world`` of one step (``docs/snapshots.md``,
    Sharded tables): the step's id with the shard in its run part, so it still parses as
    ``<run_id>/<version>`` and each shard's records have keys of their own.

    >>> shard_snapshot_id("run-1", 7, 1, 2)
    'run-1@shard1of2/7'
    """
    return snapshot_id(f"{run_id}@shard{index}of{world}", version)


class ShardInfo(BaseModel):
    """One rank's part of a step's snapshot when tables are sharded row-wise.

    ``tables`` are the row-wise tensors (state name -> global rows): this shard holds their
    rows ``g % world == index`` at local ``g // world`` (``row_layout.py``); everything else
    in the model is published whole by shard 0 alone. ``shard_ids`` names every shard of the
    step, so a reader knows what it waits for before any of them arrived.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    world: int = Field(ge=2)
    tables: dict[str, int] = Field(description="Row-wise state name -> global rows.")
    shard_ids: list[str]

    @field_validator("tables")
    @classmethod
    def _rows(cls, value: dict[str, int]) -> dict[str, int]:
        if not value or any(rows < 0 for rows in value.values()):
            raise ValueError("a shard names at least one row-wise table, with rows >= 0")
        return value

    @model_validator(mode="after")
    def _fits(self) -> ShardInfo:
        if self.index >= self.world or len(self.shard_ids) != self.world:
            raise ValueError(
                f"shard {self.index} of {self.world} with {len(self.shard_ids)} shard ids"
            )
        return self


class SnapshotManifest(BaseModel):
    """Everything a reader needs to find, reassemble and verify one snapshot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["streamtrain.snapshot.v1"] = FORMAT
    model_name: str = Field(min_length=1)
    settings_hash: str = Field(pattern=_HEX64)
    run_id: str = Field(min_length=1)
    version: int = Field(ge=0, description="The trainer step the weights were taken at.")
    created_at: float = Field(allow_inf_nan=False, description="Trainer clock at the snapshot.")
    data_watermark: float | None = Field(description="Newest sample timestamp learned from.")
    offsets: dict[int, int] = Field(description="Partition -> next offset not learned from.")
    tensors: list[TensorInfo]
    size_bytes: int = Field(ge=0, description="Length of the safetensors payload.")
    sha256: str = Field(pattern=_HEX64)
    chunk_count: int = Field(ge=1)
    chunk_bytes: int = Field(ge=1, description="Size of every chunk but the last.")
    first_chunk_offset: int | None = Field(ge=0, description="Topic offset of chunk 0.")
    kind: Literal["base", "delta"] = Field(
        "base", description="base: every tensor whole; delta: changed rows (see delta.py)."
    )
    base_id: str | None = Field(None, description="A delta's base snapshot, run_id/version.")
    predecessor_id: str | None = Field(
        None, description="The snapshot a delta applies to (base or delta), run_id/version."
    )
    shard: ShardInfo | None = Field(
        None, description="Set when this is one rank's shard of a step (shard_assembly.py)."
    )
    base_offset: int | None = Field(
        None,
        ge=0,
        description="A delta's hint: the topic offset of its base's manifest (scan.py).",
    )
    chunk_partition: int | None = Field(
        None,
        ge=1,
        le=1,  # the base partition (wire.BASE_PARTITION): the only other one in the layout
        strict=True,
        description="A base lane base's chunks are on this partition of the topic, from "
        "first_chunk_offset; absent: before the manifest on its own partition (0).",
    )

    @property
    def header(self) -> SnapshotHeader:
        return SnapshotHeader(
            self.version,
            self.run_id,
            self.data_watermark,
            self.created_at,
            self.base_id,
            self.predecessor_id,
        )

    @property
    def snapshot_id(self) -> str:
        """The wire identity (record keys and headers); a shard's names its shard, while its
        ``header`` (the version a server serves) is the step's."""
        if self.shard is None:
            return self.header.snapshot_id
        return shard_snapshot_id(self.run_id, self.version, self.shard.index, self.shard.world)

    @property
    def order(self) -> SnapshotOrder:
        """Sort key: see :func:`snapshot_order`."""
        return self.header.order

    @model_serializer(mode="wrap")
    def _without_shard(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A manifest of an unsharded model is written exactly as before ``shard`` existed,
        so servers of earlier releases keep reading it; a shard's is refused by them."""
        data: dict[str, Any] = handler(self)
        if self.shard is None:
            data.pop("shard", None)
        if self.chunk_partition is None:  # likewise: only a base lane base's names it
            data.pop("chunk_partition", None)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SnapshotManifest:
        expected = max(1, -(-self.size_bytes // self.chunk_bytes))
        if self.chunk_count != expected:
            raise ValueError(
                f"chunk_count {self.chunk_count} does not fit size_bytes {self.size_bytes} in "
                f"chunks of {self.chunk_bytes} bytes (expected {expected})"
            )
        if self.kind == "delta" and (
            self.base_id is None
            or self.predecessor_id is None
            or parse_snapshot_id(self.base_id) is None
            or parse_snapshot_id(self.predecessor_id) is None
        ):
            raise ValueError("a delta manifest needs base_id and predecessor_id as run_id/version")
        if self.kind == "base" and (self.base_id is not None or self.predecessor_id is not None):
            raise ValueError("a base manifest names no base_id or predecessor_id")
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError("tensor names in the manifest are not unique")
        if self.chunk_partition is not None and (
            self.first_chunk_offset is None or self.kind != "base" or self.shard is not None
        ):
            raise ValueError("chunk_partition is for a whole base with a first_chunk_offset")
        if self.shard is not None and self.shard.shard_ids != [
            shard_snapshot_id(self.run_id, self.version, i, self.shard.world)
            for i in range(self.shard.world)
        ]:
            raise ValueError("shard.shard_ids are not the ids of this step's shards")
        return self
