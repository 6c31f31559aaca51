"""Turn a manifest and its chunks into verified tensors, or a rejection that says why.

Checks run in this order, cheapest first, and the first failure decides the reason:

0. ``signature``: the manifest record is not signed by a trusted key (policy ``require``;
   checked on the raw bytes, before anything parses them; see ``signing.py``).
1. ``bad_manifest``: the manifest is not JSON or does not validate as ``SnapshotManifest``
   (which also refuses a chunk count that does not fit size and chunk size).
2. ``config_mismatch``: its ``settings_hash`` is not ours (another model configuration).
3. ``size``: it announces more bytes or chunks than the reader accepts.
4. ``corrupt``: a chunk's header disagrees with the manifest (chunk count).
5. ``incomplete``: a chunk index is missing.
6. ``size``: a chunk's length, or the total, differs from what the manifest announces.
7. ``checksum``: the sha256 of the reassembled bytes differs.
8. ``corrupt``: the bytes are not safetensors, or the tensors differ from the manifest's list.

Checks 0-3 allocate nothing beyond the manifest itself; 4-8 walk only the chunks that actually
arrived, so memory follows the bytes received, never the numbers a manifest announces.

Example:
    >>> import torch
    >>> from streamtrain.snapshot.payload import encode_state, sha256_hex
    >>> payload, infos = encode_state({"w": torch.zeros(3)})
    >>> manifest = SnapshotManifest(
    ...     model_name="m", settings_hash="a" * 64, run_id="r", version=1, created_at=0.0,
    ...     data_watermark=None, offsets={}, tensors=infos, size_bytes=len(payload),
    ...     sha256=sha256_hex(payload), chunk_count=1, chunk_bytes=len(payload),
    ...     first_chunk_offset=0)
    >>> result = assemble(manifest, {0: Chunk(0, 1, payload)})
    >>> type(result).__name__, sorted(result.tensors)
    ('ReceivedSnapshot', ['w'])
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, Literal

import torch
from pydantic import ValidationError

from streamtrain.snapshot.manifest import SnapshotManifest, parse_snapshot_id
from streamtrain.snapshot.mapped import MappedPayload
from streamtrain.snapshot.payload import CodecError, describe_mismatch
from streamtrain.snapshot.signing import ManifestVerifier
from streamtrain.snapshot.spool import Chunk as Chunk
from streamtrain.snapshot.spool import ChunkFill, Spool, file_sha256
from streamtrain.wire.rejects import clip_detail

RejectReason = Literal[
    "signature",
    "checksum",
    "incomplete",
    "size",
    "corrupt",
    "config_mismatch",
    "bad_manifest",
    "bad_record",
]

# A 2 GiB snapshot in the default 512 KiB chunks is 4096 chunks; this leaves room for 32 KiB
# chunks while keeping the per-chunk bookkeeping of one snapshot small.
MAX_CHUNKS = 65536


@dataclass(frozen=True)
class ReceivedSnapshot:
    """A snapshot whose bytes matched its manifest; ``tensors`` are CPU tensors (views of
    ``payload``'s mapping when read from the topic or the cache: ``mapped.py``).

    ``payload`` is the verified safetensors file, ``raw_manifest`` and ``signature`` the
    manifest record as published: together they let the server's local cache re-verify the
    snapshot exactly as a reader of the topic would. ``filled``: where its chunks were also
    written as they were read (a new replica's standby tensors, ``spool.ChunkFill``).
    """

    manifest: SnapshotManifest
    tensors: dict[str, torch.Tensor]
    payload: MappedPayload | None = None
    raw_manifest: bytes = b""
    signature: str | None = None
    filled: ChunkFill | None = None


@dataclass(frozen=True)
class RejectedSnapshot:
    """A snapshot refused by a reader: ``reason`` is one of :data:`RejectReason`."""

    reason: RejectReason
    detail: str
    version: int | None

    def __post_init__(self) -> None:
        # clipped: a detail may quote the record's own bytes (names, ids: any length), and
        # it becomes a log line and a metric's neighbour, not a copy of what arrived
        object.__setattr__(self, "detail", clip_detail(self.detail))


def parse_manifest(raw: bytes, snapshot_id: str) -> SnapshotManifest | RejectedSnapshot:
    """Validate a manifest record's value; ``snapshot_id`` (from its header) names it in errors."""
    parsed = parse_snapshot_id(snapshot_id)
    version = parsed[1] if parsed else None
    try:
        manifest = SnapshotManifest.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        return RejectedSnapshot(
            "bad_manifest",
            f"snapshot {snapshot_id}: manifest does not validate ({problems}); it was not written "
            "by a compatible streamtrain publisher",
            version,
        )
    if manifest.snapshot_id != snapshot_id:
        return RejectedSnapshot(
            "bad_manifest",
            f"manifest for {manifest.snapshot_id} arrived under header {snapshot_id!r}",
            version,
        )
    return manifest


def check_signature(
    raw: bytes, signature: str | None, snapshot_id: str, verifier: ManifestVerifier | None
) -> RejectedSnapshot | None:
    """Check 0 above; None when the manifest may be parsed."""
    problem = verifier.check(raw, signature) if verifier is not None else None
    if problem is None:
        return None
    parsed = parse_snapshot_id(snapshot_id)
    return RejectedSnapshot(
        "signature",
        f"snapshot {snapshot_id}: {problem}; the server keeps its weights (see the trust "
        "section of docs/snapshots.md)",
        parsed[1] if parsed else None,
    )


def check_manifest(
    manifest: SnapshotManifest,
    expected_settings_hash: str,
    max_snapshot_bytes: int,
    max_chunks: int = MAX_CHUNKS,
) -> RejectedSnapshot | None:
    """Checks that need no chunk (2 and 3 above); None when the snapshot is worth reading."""
    if manifest.settings_hash != expected_settings_hash:
        return RejectedSnapshot(
            "config_mismatch",
            f"snapshot {manifest.snapshot_id} of model {manifest.model_name!r} was trained with "
            f"model settings hash {manifest.settings_hash[:12]}…, this reader expects "
            f"{expected_settings_hash[:12]}…: give trainer and server the same model settings",
            manifest.version,
        )
    if manifest.size_bytes > max_snapshot_bytes:
        return RejectedSnapshot(
            "size",
            f"snapshot {manifest.snapshot_id} is {manifest.size_bytes} bytes, over the limit of "
            f"{max_snapshot_bytes}: raise max_snapshot_bytes if the model really is that large",
            manifest.version,
        )
    if manifest.chunk_count > max_chunks:
        return RejectedSnapshot(
            "size",
            f"snapshot {manifest.snapshot_id} announces {manifest.chunk_count} chunks of "
            f"{manifest.chunk_bytes} bytes, over the limit of {max_chunks} chunks: publish with "
            "larger chunks (the default is 512 KiB)",
            manifest.version,
        )
    return None


def assemble(
    manifest: SnapshotManifest, chunks: Mapping[int, Chunk]
) -> ReceivedSnapshot | RejectedSnapshot:
    """Checks 4-8 above on chunks held in memory (tests, small payloads): spooled first."""
    spool = Spool(max_bytes=manifest.size_bytes + manifest.chunk_bytes)
    try:
        for chunk in chunks.values():
            spool.add(chunk)
        return verify_spool(manifest, spool)
    finally:
        spool.close()


def verify_spool(manifest: SnapshotManifest, spool: Spool) -> ReceivedSnapshot | RejectedSnapshot:
    """Checks 4-8 above on a manifest that passed :func:`check_manifest` and its spooled
    chunks (each chunk's own sha256 included); the spool's file becomes the payload."""
    problem = spool.check(manifest.chunk_count, manifest.chunk_bytes, manifest.size_bytes)
    if problem is not None:
        return RejectedSnapshot(
            problem.reason,
            f"snapshot {manifest.snapshot_id}: {problem}",
            manifest.version,
        )
    return verify_file(manifest, spool.file, spool.sha256(manifest.size_bytes))


def verify_payload(
    manifest: SnapshotManifest, payload: bytes
) -> ReceivedSnapshot | RejectedSnapshot:
    """Checks 6-8 on payload bytes in memory (tests, small payloads)."""
    with tempfile.TemporaryFile() as file:
        file.write(payload)
        file.flush()
        return verify_file(manifest, file)


def verify_file(
    manifest: SnapshotManifest, file: BinaryIO, sha256: str | None = None
) -> ReceivedSnapshot | RejectedSnapshot:
    """Checks 6-8 on a payload file (spooled from the topic, or the local cache): size, sha256
    (``sha256``, the file's taken as it was written, or read in blocks), then the file
    memory-mapped and its tensors compared with the manifest."""
    sid, version = manifest.snapshot_id, manifest.version
    size = os.fstat(file.fileno()).st_size
    if size != manifest.size_bytes:
        return RejectedSnapshot(
            "size", f"snapshot {sid}: {size} bytes, expected {manifest.size_bytes}", version
        )
    digest = sha256 if sha256 is not None else file_sha256(file.fileno(), size)
    if digest != manifest.sha256:
        return RejectedSnapshot(
            "checksum",
            f"snapshot {sid}: sha256 {digest[:12]}… differs from the manifest's "
            f"{manifest.sha256[:12]}…; a chunk was altered in transit or on the broker",
            version,
        )
    try:
        mapped = MappedPayload(file, size)
    except (CodecError, ValueError, TypeError, RecursionError, OverflowError, RuntimeError) as exc:
        # CodecError names what the header breaks; the others are a parser (json, int, torch)
        # tripping on bytes nobody checked for that case. Either way the payload is refused
        # here: raised, it was taken for a topic outage, and the batch after it was dropped.
        return RejectedSnapshot(
            "corrupt",
            f"snapshot {sid}: payload is not safetensors: {type(exc).__name__}: {exc}",
            version,
        )
    mismatch = describe_mismatch(mapped.tensors, manifest.tensors)
    if mismatch:
        return RejectedSnapshot("corrupt", f"snapshot {sid}: {mismatch}", version)
    return ReceivedSnapshot(manifest, mapped.tensors, mapped)


def screen_manifest(
    raw_manifest: bytes,
    snapshot_id: str,
    signature: str | None,
    *,
    settings_hash: str,
    max_snapshot_bytes: int,
    verifier: ManifestVerifier | None = None,
) -> SnapshotManifest | RejectedSnapshot:
    """Checks 0 to 3: everything that needs no chunk, in order."""
    rejected = check_signature(raw_manifest, signature, snapshot_id, verifier)
    if rejected is not None:
        return rejected
    manifest = parse_manifest(raw_manifest, snapshot_id)
    if isinstance(manifest, RejectedSnapshot):
        return manifest
    return check_manifest(manifest, settings_hash, max_snapshot_bytes) or manifest


def verify_snapshot(
    raw_manifest: bytes,
    snapshot_id: str,
    chunks: Mapping[int, Chunk],
    *,
    settings_hash: str,
    max_snapshot_bytes: int,
    signature: str | None = None,
    verifier: ManifestVerifier | None = None,
) -> ReceivedSnapshot | RejectedSnapshot:
    """All checks, 0 to 8, on a raw manifest record value and the chunks gathered for it."""
    manifest = screen_manifest(
        raw_manifest,
        snapshot_id,
        signature,
        settings_hash=settings_hash,
        max_snapshot_bytes=max_snapshot_bytes,
        verifier=verifier,
    )
    if isinstance(manifest, RejectedSnapshot):
        return manifest
    return assemble(manifest, chunks)
