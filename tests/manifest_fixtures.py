"""A manifest for tests that need one only as a record of what was written or scanned: its
version, run and chain are real, its payload fields hold placeholders (no tensors, 8 bytes)."""

from __future__ import annotations

from typing import Literal

from streamtrain.snapshot.manifest import SnapshotManifest


def placeholder_manifest(
    run_id: str,
    version: int,
    *,
    created_at: float = 0.0,
    kind: Literal["base", "delta"] = "base",
    base_id: str | None = None,
    predecessor_id: str | None = None,
) -> SnapshotManifest:
    """A manifest of model ``m`` naming ``version`` of ``run_id``; a delta names its chain."""
    return SnapshotManifest(
        model_name="m",
        settings_hash="a" * 64,
        run_id=run_id,
        version=version,
        created_at=created_at,
        data_watermark=None,
        offsets={},
        tensors=[],
        size_bytes=8,
        sha256="0" * 64,
        chunk_count=1,
        chunk_bytes=8,
        first_chunk_offset=0,
        kind=kind,
        base_id=base_id,
        predecessor_id=predecessor_id,
    )
