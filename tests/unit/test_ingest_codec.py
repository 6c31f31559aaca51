"""A declared codec (ingest.codec): no header is read; a record of another format is rejected
with its reason and a hint naming the setting; auto still goes by the content-type header."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from streamtrain.config import Settings
from streamtrain.ingest.decode import decode_records
from streamtrain.ingest.options import SourceOptions
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import encode_binary, encode_json

SPEC = SampleSpec(feature_shape=(2,), task="multiclass", num_classes=5)


@dataclass(frozen=True)
class Rec:
    """A record whose headers must not be read (a declared codec reads none)."""

    partition: int
    offset: int
    value: bytes | None
    topic: str = "t"
    timestamp: int = 5_000
    key: bytes | None = None

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        raise AssertionError("a declared codec must not read headers")


def test_declared_binary_reads_no_header_and_names_the_codec_in_rejects() -> None:
    records = [
        Rec(0, 0, encode_binary(SPEC, [1.0, 2.0], 3)),
        Rec(0, 1, encode_json([1.0, 2.0], 3)),  # JSON in a binary topic: no magic
        Rec(0, 2, b"XXXX" + encode_binary(SPEC, [1.0, 2.0], 3)[4:]),  # wrong magic
        Rec(0, 3, None),
        Rec(0, 4, encode_binary(SPEC, [4.0, 2.0], 4)),
    ]
    d = decode_records(SPEC, records, 1024, codec="binary").decoded
    assert d.rows.tolist() == [0, 4]
    assert d.labels.tolist() == [3, 4]
    assert d.timestamps.tolist() == [5.0, 5.0]  # the record timestamps, still read
    reasons = {i: r.reason for i, r in d.rejects.items()}
    assert reasons == {1: "undecodable", 2: "undecodable", 3: "undecodable"}
    for i in (1, 2):
        assert "ingest.codec=binary reads every record of this topic as binary" in (
            d.rejects[i].detail
        )
        assert "set ingest.codec=auto" in d.rejects[i].detail
    assert "tombstone" in d.rejects[3].detail


def test_declared_json_rejects_binary_records_as_undecodable_naming_the_codec() -> None:
    records = [
        Rec(1, 7, encode_json([1.0, 2.0], 1)),
        Rec(1, 8, encode_binary(SPEC, [1.0, 2.0], 3)),
        Rec(1, 9, encode_json([1.0, 2.0], 9)),  # class out of range: not a codec matter
    ]
    d = decode_records(SPEC, records, 1024, codec="json").decoded
    assert d.rows.tolist() == [0]
    assert d.rejects[1].reason == "undecodable"
    assert "ingest.codec=json" in d.rejects[1].detail
    assert d.rejects[2].reason == "bad_label"
    assert "ingest.codec" not in d.rejects[2].detail


@dataclass(frozen=True)
class HeaderRec(Rec):
    header: bytes | None = None

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        return [] if self.header is None else [("content-type", self.header)]


def test_auto_reads_the_content_type_of_each_record() -> None:
    records = [
        HeaderRec(
            0, 0, encode_binary(SPEC, [1.0, 2.0], 3), header=b"application/x-streamtrain-sample"
        ),
        HeaderRec(0, 1, encode_json([1.0, 2.0], 2)),
        HeaderRec(0, 2, encode_json([1.0, 2.0], 2), header=b"text/csv"),
    ]
    d = decode_records(SPEC, records, 1024).decoded
    assert d.labels.tolist() == [3, 2]
    assert d.rejects[2].reason == "unknown_content_type"
    with pytest.raises(AssertionError, match="must not read headers"):
        decode_records(SPEC, [Rec(0, 0, encode_json([1.0, 2.0], 2))], 1024, codec="auto")


def test_codec_and_decode_workers_settings_are_checked() -> None:
    options = SourceOptions.from_settings(
        Settings.model_validate({"ingest": {"codec": "binary", "decode_workers": 3}})
    )
    assert (options.codec, options.decode_workers) == ("binary", 3)
    assert SourceOptions.from_settings(Settings()).decode_workers == "auto"
    with pytest.raises(ValueError, match="decode_workers"):
        Settings.model_validate({"ingest": {"decode_workers": 0}})
    with pytest.raises(ValueError, match="codec"):
        Settings.model_validate({"ingest": {"codec": "avro"}})
    with pytest.raises(ValueError, match=r"ingest\.codec='avro'"):
        SourceOptions(codec="avro")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ingest\.decode_workers=0"):
        SourceOptions(decode_workers=0)
