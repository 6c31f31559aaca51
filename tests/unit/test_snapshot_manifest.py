from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import (
    SnapshotManifest,
    TensorInfo,
    parse_snapshot_id,
    settings_hash,
)
from streamtrain.snapshot.wire import chunk_headers, manifest_headers, parse_headers


def _fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model_name": "mlp",
        "settings_hash": "a" * 64,
        "run_id": "run-1",
        "version": 3,
        "created_at": 1.0,
        "data_watermark": 2.0,
        "offsets": {0: 10},
        "tensors": [{"name": "w", "dtype": "float32", "shape": [2, 3]}],
        "size_bytes": 1000,
        "sha256": "b" * 64,
        "chunk_count": 2,
        "chunk_bytes": 512,
        "first_chunk_offset": 0,
    }
    fields.update(overrides)
    return fields


def test_manifest_json_round_trip_keeps_int_partition_keys() -> None:
    manifest = SnapshotManifest.model_validate(_fields())
    again = SnapshotManifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    assert again.offsets == {0: 10}
    assert again.snapshot_id == "run-1/3"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"format": "streamtrain.snapshot.v2"}, "format"),
        ({"version": -1}, "version"),
        ({"sha256": "xyz"}, "sha256"),
        ({"settings_hash": "A" * 64}, "settings_hash"),
        ({"unexpected": 1}, "unexpected"),
        ({"chunk_count": 3}, "chunk_count"),
        ({"first_chunk_offset": -2}, "first_chunk_offset"),
        ({"tensors": [{"name": "w", "dtype": "float32", "shape": [-1]}]}, "shape"),
    ],
)
def test_manifest_rejects_bad_fields(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        SnapshotManifest.model_validate(_fields(**overrides))
    assert field in str(info.value)


def test_manifest_rejects_duplicate_tensor_names() -> None:
    info = TensorInfo(name="w", dtype="float32", shape=[1])
    with pytest.raises(ValidationError, match="not unique"):
        SnapshotManifest.model_validate(_fields(tensors=[info, info]))


def test_manifest_is_frozen() -> None:
    manifest = SnapshotManifest.model_validate(_fields())
    with pytest.raises(ValidationError):
        manifest.version = 4  # type: ignore[misc]


def test_settings_hash_is_canonical_and_sensitive() -> None:
    a = settings_hash({"name": "mlp", "input_shape": [16], "params": {"h": 64, "d": 0.1}})
    b = settings_hash({"params": {"d": 0.1, "h": 64}, "input_shape": [16], "name": "mlp"})
    c = settings_hash({"name": "mlp", "input_shape": [17], "params": {"h": 64, "d": 0.1}})
    assert a == b != c
    assert len(a) == 64


def test_snapshot_id_parsing() -> None:
    assert parse_snapshot_id("run/with/slash/12") == ("run/with/slash", 12)
    assert parse_snapshot_id("run-1") is None
    assert parse_snapshot_id("run-1/x") is None
    for digit in ("\u00b2", "\u0663", "\uff13", "1\u00b9"):  # superscript, Arabic-Indic, fullwidth
        assert parse_snapshot_id(f"run-1/{digit}") is None


def test_headers_round_trip_and_reject_malformed() -> None:
    chunk = parse_headers(chunk_headers("mlp", "r/1", 1, 4))
    assert chunk is not None and (chunk.kind, chunk.index, chunk.count) == ("chunk", 1, 4)
    manifest = parse_headers(manifest_headers("mlp", "r/1"))
    assert manifest is not None and manifest.kind == "manifest"
    assert parse_headers(None) is None
    assert parse_headers([("streamtrain-kind", b"chunk"), ("streamtrain-snapshot", b"r/1")]) is None
    bad_index = [
        ("streamtrain-kind", b"chunk"),
        ("streamtrain-snapshot", b"r/1"),
        ("streamtrain-chunk", b"4/4"),
    ]
    assert parse_headers(bad_index) is None
    assert parse_headers([("streamtrain-kind", b"\xff"), ("streamtrain-snapshot", b"r/1")]) is None


@pytest.mark.parametrize(
    "chunk", ["\u00b2/3", "0/\u00b3", "\u0661/3", "0/\uff13", " 0/3", "+0/3", "0/3 "]
)
def test_chunk_headers_with_non_ascii_digits_are_malformed(chunk: str) -> None:
    headers = [
        ("streamtrain-kind", b"chunk"),
        ("streamtrain-snapshot", b"r/1"),
        ("streamtrain-chunk", chunk.encode()),
    ]
    assert parse_headers(headers) is None  # never a ValueError out of int()


def test_the_lane_header_marks_base_lane_records_and_nothing_else_is_accepted() -> None:
    chunk = wire.parse_headers(wire.chunk_headers("m", "run/4", 0, 2, lane=wire.BASE_LANE))
    manifest = wire.parse_headers(wire.manifest_headers("m", "run/4", lane=wire.BASE_LANE))
    plain = wire.parse_headers(wire.chunk_headers("m", "run/5", 0, 2))
    assert chunk is not None and chunk.lane == "base"
    assert manifest is not None and manifest.lane == "base"
    assert plain is not None and plain.lane == ""
    for kind in (wire.chunk_headers("m", "run/4", 0, 2), wire.manifest_headers("m", "run/4")):
        assert wire.parse_headers([*kind, (wire.LANE, b"delta")]) is None


def test_chunk_partition_is_written_only_for_a_base_whose_chunks_are_elsewhere() -> None:
    plain = SnapshotManifest.model_validate(_fields())
    assert "chunk_partition" not in plain.model_dump_json()  # earlier servers still read it
    moved = SnapshotManifest.model_validate(_fields(chunk_partition=1))
    assert '"chunk_partition":1' in moved.model_dump_json()
    assert SnapshotManifest.model_validate_json(moved.model_dump_json()) == moved
    delta = {"kind": "delta", "base_id": "run-1/1", "predecessor_id": "run-1/2"}
    for refused in (
        _fields(chunk_partition=0),  # absent means the manifest's own partition
        _fields(chunk_partition=2),  # no such partition in the layout
        _fields(chunk_partition=True),
        _fields(chunk_partition=1, first_chunk_offset=None),  # where on it?
        _fields(chunk_partition=1, **delta),  # a delta's chunks are beside its manifest
    ):
        with pytest.raises(ValidationError):
            SnapshotManifest.model_validate(refused)
