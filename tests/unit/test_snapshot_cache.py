"""The server's local snapshot cache: atomic entries, newest kept, every check on load."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streamtrain.snapshot.cache import SnapshotCache
from streamtrain.snapshot.manifest import SnapshotManifest, settings_hash
from streamtrain.snapshot.payload import encode_state, sha256_hex
from streamtrain.snapshot.signing import ManifestSigner, ManifestVerifier
from streamtrain.snapshot.verify import ReceivedSnapshot, verify_payload

HASH = settings_hash({"name": "linear"})
KEY = Ed25519PrivateKey.generate()


def _received(
    version: int, *, signer: ManifestSigner | None = None, run_id: str = "run"
) -> ReceivedSnapshot:
    payload, infos = encode_state({"w": torch.full((4,), float(version))})
    manifest = SnapshotManifest(
        model_name="linear",
        settings_hash=HASH,
        run_id=run_id,
        version=version,
        created_at=float(version),
        data_watermark=None,
        offsets={},
        tensors=infos,
        size_bytes=len(payload),
        sha256=sha256_hex(payload),
        chunk_count=1,
        chunk_bytes=len(payload),
        first_chunk_offset=0,
    )
    raw = manifest.model_dump_json().encode()
    result = verify_payload(manifest, payload)
    assert isinstance(result, ReceivedSnapshot)
    signature = signer.sign(raw) if signer is not None else None
    return dataclasses.replace(result, raw_manifest=raw, signature=signature)


def _cache(directory: Path, policy: str = "require", keep: int = 2) -> SnapshotCache:
    keys = [KEY.public_key()] if policy == "require" else []
    verifier = ManifestVerifier(keys, policy)  # type: ignore[arg-type]
    return SnapshotCache(directory, settings_hash=HASH, keep=keep, verifier=verifier)


def _versions(cache: SnapshotCache) -> list[object]:
    return [
        item.manifest.version if isinstance(item, ReceivedSnapshot) else item.reason
        for item in cache.newest_first()
    ]


def test_round_trip_keeps_the_newest_and_leaves_no_temporary(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    signer = ManifestSigner(KEY)
    for version in (3, 5, 4, 1):
        cache.store(_received(version, signer=signer))
    assert _versions(cache) == [5, 4]
    assert sorted(p.name.startswith(".tmp-") for p in tmp_path.iterdir()) == [False, False]
    newest = next(cache.newest_first())
    assert isinstance(newest, ReceivedSnapshot)
    assert torch.equal(newest.tensors["w"], torch.full((4,), 5.0))
    assert newest.signature is not None and newest.raw_manifest


def test_a_flipped_payload_byte_is_a_checksum_rejection(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    entry = cache.store(_received(7, signer=ManifestSigner(KEY)))
    assert entry is not None
    payload = entry / "payload.safetensors"
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0xFF
    payload.write_bytes(bytes(data))
    assert _versions(cache) == ["checksum"]


def test_an_edited_manifest_or_foreign_signature_is_a_signature_rejection(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    entry = cache.store(_received(7, signer=ManifestSigner(KEY)))
    assert entry is not None
    manifest = entry / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"version":7', b'"version":9'))
    assert _versions(cache) == ["signature"]
    other = tmp_path / "other"
    _cache(other, policy="off").store(
        _received(8, signer=ManifestSigner(Ed25519PrivateKey.generate()))
    )
    _cache(other, policy="off").store(_received(6))  # unsigned
    assert _versions(_cache(other)) == ["signature", "signature"]
    assert _versions(_cache(other, policy="off")) == [8, 6]


def test_oversized_or_missing_payload_is_refused_without_reading_it(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    entry = cache.store(_received(7, signer=ManifestSigner(KEY)))
    assert entry is not None
    with (entry / "payload.safetensors").open("ab") as handle:
        handle.write(b"\0" * 10)
    assert _versions(cache) == ["size"]
    os.remove(entry / "payload.safetensors")
    assert _versions(cache) == ["size"]


def test_another_model_configuration_is_refused(tmp_path: Path) -> None:
    _cache(tmp_path).store(_received(7, signer=ManifestSigner(KEY)))
    other = SnapshotCache(
        tmp_path,
        settings_hash=settings_hash({"name": "mlp"}),
        verifier=ManifestVerifier([KEY.public_key()], "require"),
    )
    assert [getattr(i, "reason", None) for i in other.newest_first()] == ["config_mismatch"]


def test_snapshot_without_its_record_is_not_cached(tmp_path: Path) -> None:
    bare = dataclasses.replace(_received(7), raw_manifest=b"")
    assert _cache(tmp_path).store(bare) is None
    assert list(_cache(tmp_path / "absent").newest_first()) == []


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SnapshotCache(tmp_path, settings_hash=HASH, keep=0)
