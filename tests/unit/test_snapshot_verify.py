from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable

import pytest
import torch

from streamtrain.serve.weights.checks import SnapshotRejected, check_whole
from streamtrain.snapshot import verify as verify_module
from streamtrain.snapshot.manifest import SnapshotManifest, settings_hash
from streamtrain.snapshot.payload import decode_state, encode_state, sha256_hex, split_chunks
from streamtrain.snapshot.verify import (
    Chunk,
    ReceivedSnapshot,
    RejectedSnapshot,
    assemble,
    verify_snapshot,
)

HASH = settings_hash({"name": "mlp"})
CHUNK = 1000


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(30, 20, generator=gen),
        "layer.bias": torch.randn(30, generator=gen).to(torch.float16),
        "steps": torch.tensor([7], dtype=torch.int64),
    }


def _snapshot(
    state: dict[str, torch.Tensor], **overrides: object
) -> tuple[bytes, dict[int, Chunk]]:
    payload, infos = encode_state(state)
    pieces = split_chunks(payload, CHUNK)
    fields: dict[str, object] = {
        "model_name": "mlp",
        "settings_hash": HASH,
        "run_id": "run",
        "version": 5,
        "created_at": 0.0,
        "data_watermark": None,
        "offsets": {},
        "tensors": infos,
        "size_bytes": len(payload),
        "sha256": sha256_hex(payload),
        "chunk_count": len(pieces),
        "chunk_bytes": CHUNK,
        "first_chunk_offset": 0,
    }
    fields.update(overrides)
    manifest = SnapshotManifest.model_validate(fields)
    chunks = {i: Chunk(i, len(pieces), piece) for i, piece in enumerate(pieces)}
    return manifest.model_dump_json().encode(), chunks


def _verify(raw: bytes, chunks: dict[int, Chunk], sid: str = "run/5") -> object:
    return verify_snapshot(raw, sid, chunks, settings_hash=HASH, max_snapshot_bytes=10**6)


def _reason(result: object) -> str:
    assert isinstance(result, RejectedSnapshot), result
    assert result.detail
    return result.reason


def test_codec_round_trip_is_bit_identical() -> None:
    state = _state()
    payload, infos = encode_state(state)
    decoded = decode_state(payload)
    assert [i.name for i in infos] == list(state)
    for name, tensor in state.items():
        assert decoded[name].dtype == tensor.dtype
        assert torch.equal(decoded[name], tensor)


def test_codec_accepts_shared_and_non_contiguous_tensors() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "tied": base, "t": base.t(), "row": base[1]}
    decoded = decode_state(encode_state(state)[0])
    for name, tensor in state.items():
        assert torch.equal(decoded[name], tensor)


def test_chunked_snapshot_verifies() -> None:
    raw, chunks = _snapshot(_state())
    assert len(chunks) > 1
    result = _verify(raw, chunks)
    assert isinstance(result, ReceivedSnapshot)
    assert result.manifest.version == 5
    assert torch.equal(result.tensors["layer.weight"], _state()["layer.weight"])


def test_flipped_byte_is_a_checksum_failure() -> None:
    raw, chunks = _snapshot(_state())
    data = bytearray(chunks[1].data)
    data[10] ^= 0xFF
    chunks[1] = Chunk(1, chunks[1].count, bytes(data))
    result = _verify(raw, chunks)
    assert _reason(result) == "checksum"
    assert isinstance(result, RejectedSnapshot) and result.version == 5


def test_missing_chunk_is_incomplete() -> None:
    raw, chunks = _snapshot(_state())
    del chunks[2]
    assert _reason(_verify(raw, chunks)) == "incomplete"


def test_truncated_chunk_is_a_size_failure() -> None:
    raw, chunks = _snapshot(_state())
    last = max(chunks)
    chunks[last] = Chunk(last, chunks[last].count, chunks[last].data[:-3])
    assert _reason(_verify(raw, chunks)) == "size"


def test_chunk_count_disagreeing_with_manifest_is_corrupt() -> None:
    raw, chunks = _snapshot(_state())
    chunks[0] = Chunk(0, 99, chunks[0].data)
    assert _reason(_verify(raw, chunks)) == "corrupt"


def test_other_configuration_is_a_config_mismatch() -> None:
    raw, chunks = _snapshot(_state(), settings_hash=settings_hash({"name": "cnn"}))
    result = _verify(raw, chunks)
    assert _reason(result) == "config_mismatch"
    assert isinstance(result, RejectedSnapshot) and "same model settings" in result.detail


def test_oversized_announcement_is_refused_before_reading() -> None:
    raw, _ = _snapshot(_state())
    result = verify_snapshot(raw, "run/5", {}, settings_hash=HASH, max_snapshot_bytes=100)
    assert _reason(result) == "size"


def test_garbage_manifest_is_bad_manifest_with_version_from_header() -> None:
    result = _verify(b"{not json", {}, sid="run/9")
    assert _reason(result) == "bad_manifest"
    assert isinstance(result, RejectedSnapshot) and result.version == 9


def test_manifest_under_another_snapshots_header_is_bad_manifest() -> None:
    raw, chunks = _snapshot(_state())
    assert _reason(_verify(raw, chunks, sid="run/6")) == "bad_manifest"


def test_payload_that_is_not_safetensors_is_corrupt() -> None:
    garbage = b"\x00" * 2500
    pieces = split_chunks(garbage, CHUNK)
    raw, _ = _snapshot(
        _state(), size_bytes=len(garbage), sha256=sha256_hex(garbage), chunk_count=len(pieces)
    )
    chunks = {i: Chunk(i, len(pieces), p) for i, p in enumerate(pieces)}
    assert _reason(_verify(raw, chunks)) == "corrupt"


def test_tensor_list_disagreeing_with_payload_is_corrupt() -> None:
    _, infos = encode_state(_state())
    renamed = [infos[0].model_copy(update={"shape": [20, 30]}), *infos[1:]]
    raw, chunks = _snapshot(_state(), tensors=renamed)
    result = _verify(raw, chunks)
    assert _reason(result) == "corrupt"
    assert isinstance(result, RejectedSnapshot) and "layer.weight" in result.detail


def _traced_peak(fn: Callable[[], object]) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_chunk_count_bomb_is_refused_before_any_allocation() -> None:
    # 2e9 one-byte chunks fit the 2 GiB byte limit; the chunk limit refuses them at once.
    raw, _ = _snapshot(_state(), size_bytes=2 * 10**9, chunk_bytes=1, chunk_count=2 * 10**9)
    result, peak = _traced_peak(
        lambda: verify_snapshot(
            raw,
            "run/5",
            {0: Chunk(0, 2 * 10**9, b"x")},
            settings_hash=HASH,
            max_snapshot_bytes=2 * 1024**3,
        )
    )
    assert _reason(result) == "size" and "2000000000 chunks" in result.detail  # type: ignore[attr-defined]
    assert peak < 1_000_000, f"verification allocated {peak} bytes for a 1-byte chunk"


def test_missing_chunks_are_counted_without_walking_the_announced_count() -> None:
    # Even past the limit check, assembly walks only the chunks that arrived.
    raw, _ = _snapshot(_state(), size_bytes=2 * 10**9, chunk_bytes=1, chunk_count=2 * 10**9)
    manifest = SnapshotManifest.model_validate_json(raw)
    chunks = {i: Chunk(i, 2 * 10**9, b"x") for i in (0, 1, 3)}
    result, peak = _traced_peak(lambda: assemble(manifest, chunks))
    assert _reason(result) == "incomplete"
    assert "1999999997 of 2000000000 chunks missing (first: 2)" in result.detail  # type: ignore[attr-defined]
    assert peak < 1_000_000


def test_inconsistent_counts_never_validate() -> None:
    for fields in (
        {"size_bytes": 10, "chunk_bytes": 1, "chunk_count": 2 * 10**9},
        {"size_bytes": 2 * 10**9, "chunk_bytes": 2, "chunk_count": 2 * 10**9},
    ):
        raw = _snapshot(_state())[0]
        doc = json.loads(raw)
        doc.update(fields)
        assert _reason(_verify(json.dumps(doc).encode(), {})) == "bad_manifest"


def test_a_parser_that_trips_on_the_payload_refuses_it_as_corrupt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytes that make a parser raise something other than ``CodecError`` (audit45 found
    three: deep JSON, a 5000-digit integer, a shape torch cannot make) are refused as
    ``corrupt`` with one line, not raised (the watcher took that for a topic outage)."""
    raw, chunks = _snapshot(_state())

    def tripping(file: object, size: int) -> object:
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")

    monkeypatch.setattr(verify_module, "MappedPayload", tripping)
    result = _verify(raw, chunks)
    assert _reason(result) == "corrupt"
    assert isinstance(result, RejectedSnapshot)
    assert "RecursionError" in result.detail and "\n" not in result.detail


def test_a_refusal_quoting_the_records_own_names_stays_one_short_line() -> None:
    """A tensor name is the payload's own bytes (up to the header's limit): a refusal that
    names it, by the reader or by the slot, is clipped, keeping its start and its hint."""
    state = _state()
    long_name = "n" * 200_000
    raw, chunks = _snapshot({**state, long_name: torch.zeros(1)})
    _, other_infos = encode_state(state)  # the manifest lists the model's tensors only
    listed = {**json.loads(raw), "tensors": [i.model_dump() for i in other_infos]}
    result = _verify(json.dumps(listed).encode(), chunks)
    assert isinstance(result, RejectedSnapshot)
    assert result.reason in ("corrupt", "checksum", "size")
    assert len(result.detail) < 1000 and "\n" not in result.detail
    targets = {name: tensor.clone() for name, tensor in state.items()}
    with pytest.raises(SnapshotRejected) as refused:
        check_whole(targets, {**state, long_name: torch.zeros(1)}, None)
    assert refused.value.reason == "shape_mismatch"
    assert len(str(refused.value)) < 1000 and "unexpected" in str(refused.value)
