"""Audit 45: a snapshot payload whose safetensors header is hostile is refused as ``corrupt``
with a one-line reason, never an exception out of the verifier.

Before the fix, three headers escaped ``verify_file`` as exceptions: JSON nested thousands
deep (RecursionError), an integer of more than 4300 digits (ValueError from Python's int
limit) and an empty tensor whose other sizes overflow int64 (TypeError from torch). On a
server an exception there was taken for a topic outage: the rest of the fetched batch was
dropped unread, nothing was counted as rejected, and a new replica retried its scan forever
instead of loading the older, good snapshot (``test_audit45_snapshot_topic_fuzz.py``)."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.payload import encode_state, sha256_hex
from streamtrain.snapshot.verify import RejectedSnapshot, verify_payload

_, INFOS = encode_state({"w": torch.arange(6.0)})


def _safetensors(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _manifest(payload: bytes) -> SnapshotManifest:
    """A manifest that vouches for ``payload`` exactly (size and sha256): only the header's
    own checks can refuse it."""
    return SnapshotManifest(
        model_name="m", settings_hash="a" * 64, run_id="r", version=1, created_at=0.0,
        data_watermark=None, offsets={}, tensors=INFOS, size_bytes=len(payload),
        sha256=sha256_hex(payload), chunk_count=1, chunk_bytes=len(payload),
        first_chunk_offset=0,
    )  # fmt: skip


def _entry(shape: str, offsets: str = "[0,0]") -> bytes:
    return f'{{"w":{{"dtype":"F32","shape":{shape},"data_offsets":{offsets}}}}}'.encode()


HOSTILE = {
    "nested arrays": (b"[" * 100_000 + b"]" * 100_000, "RecursionError"),
    "nested objects": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "RecursionError"),
    "5000-digit offset": (_entry("[6]", "[0," + "9" * 5000 + "]"), "4300 digits"),
    "empty tensor, int64 overflow": (_entry(f"[0,{10**30}]"), "not one torch can make"),
    "empty tensor, stride overflow": (_entry(f"[0,{2**62},4]"), "not one torch can make"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_is_refused_as_corrupt(case: str) -> None:
    header, why = HOSTILE[case]
    payload = _safetensors(header)
    result = verify_payload(_manifest(payload), payload)
    assert isinstance(result, RejectedSnapshot), result
    assert result.reason == "corrupt"
    assert why in result.detail and "\n" not in result.detail[:300]


def test_a_good_payload_still_verifies() -> None:
    payload, _ = encode_state({"w": torch.arange(6.0)})
    header = json.loads(payload[8 : 8 + int.from_bytes(payload[:8], "little")])
    assert header["w"]["shape"] == [6]
    result = verify_payload(_manifest(payload), payload)
    assert not isinstance(result, RejectedSnapshot), result
    assert result.tensors["w"].tolist() == list(range(6))
