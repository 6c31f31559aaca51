"""Which codec a record's headers select."""

from __future__ import annotations

from streamtrain.wire import content_types_of, format_of

BIN = ("content-type", b"application/x-streamtrain-sample")


def test_same_headers_on_every_record_and_mixed_headers_give_each_records_type() -> None:
    same = [[BIN], [BIN], [BIN]]
    assert content_types_of(same) == [BIN[1]] * 3
    mixed = [[BIN], None, [("Content-Type", b"text/csv"), BIN], [], [("key", b"x")]]
    assert content_types_of(mixed) == [BIN[1], None, b"text/csv", None, None]
    assert content_types_of([None, None]) == [None, None]
    assert content_types_of([]) == []


def test_format_of_content_type_values() -> None:
    assert format_of(None) == "json"
    assert format_of(b"Application/JSON; charset=utf-8") == "json"
    assert format_of(b" application/x-streamtrain-sample ") == "binary"
    assert format_of(b"application/x-streamtrain-sample; v=2") is None
    assert format_of(b"text/csv") is None
