"""docs/snapshots.md's independent verifier, run as written against manifests signed by the
real ManifestSigner: the documented bytes and context string cannot drift from the code."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streamtrain.snapshot.manifest import SnapshotManifest, TensorInfo
from streamtrain.snapshot.signing import ManifestSigner

DOC = Path(__file__).resolve().parents[2] / "docs" / "snapshots.md"
_BLOCK = re.compile(r"<!-- verify-example:[^>]*-->\n```python\n(.*?)```", re.S)


def _documented_verifier() -> Any:
    (code,) = _BLOCK.findall(DOC.read_text())
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # the doc's code, exactly as shown
    return namespace["verify_manifest"]


def _manifest_record() -> bytes:
    manifest = SnapshotManifest(
        model_name="mlp",
        settings_hash="0" * 64,
        run_id="run-1",
        version=7,
        created_at=time.time(),
        data_watermark=None,
        offsets={0: 12},
        tensors=[TensorInfo(name="w", dtype="float32", shape=[2, 2])],
        size_bytes=100,
        sha256="a" * 64,
        chunk_count=1,
        chunk_bytes=512 * 1024,
        first_chunk_offset=3,
    )
    return manifest.model_dump_json().encode()


def test_the_documented_verifier_accepts_real_signatures_and_refuses_forgeries() -> None:
    verify = _documented_verifier()
    private = Ed25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = _manifest_record()
    header = ManifestSigner(private).sign(record)
    assert verify(record, header, public_pem)

    assert not verify(record.replace(b'"version":7', b'"version":8'), header, public_pem)
    other = Ed25519PrivateKey.generate().public_key()
    other_pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert not verify(record, header, other_pem)
    # Signed without the context string: the documented check must refuse it.
    bare = base64.b64encode(private.sign(record)).decode()
    scheme, key_id, _ = header.split(":")
    assert not verify(record, f"{scheme}:{key_id}:{bare}", public_pem)


def test_documented_header_and_context_facts_hold() -> None:
    text = DOC.read_text()
    private = Ed25519PrivateKey.generate()
    header = ManifestSigner(private).sign(_manifest_record())
    scheme, key_id, encoded = header.split(":")
    assert scheme == "ed25519" and re.fullmatch(r"[0-9a-f]{16}", key_id)
    assert len(encoded) == 88 and "88 characters" in text
    context = b"streamtrain manifest signature v1\n"
    assert f"{len(context)}-byte ASCII context string" in text
