"""Audit 45, step 2 on the labels topic: a label nested thousands deep is dead-lettered as
``undecodable``, and one whose timestamp is far ahead (epoch milliseconds) as
``bad_timestamp``, in both codecs, with a one-line reason.

Before: the nested label raised RecursionError out of ``decode_label``, past the join's
``except LabelError`` (``join/partition_state.py``), instead of being dead-lettered; the
millisecond timestamp was taken, became the joined sample's time, and would have moved the
trainer's data watermark 50,000 years ahead (``test_audit45_sample_timestamps.py``)."""

from __future__ import annotations

import time

import pytest

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.label_record import (
    LABEL_CONTENT_TYPE,
    LabelError,
    decode_label,
    encode_label_binary,
    encode_label_json,
)

SPEC = SampleSpec(feature_shape=(4,), task="binary")
NESTED = b'{"id": "r1", "label": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def _refusal(value: bytes, content_type: bytes | None = None) -> LabelError:
    with pytest.raises(LabelError) as caught:
        decode_label(SPEC, value, content_type, b"r1", time.time())
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_deeply_nested_label_is_undecodable() -> None:
    refused = _refusal(NESTED)
    assert refused.reason == "undecodable" and "nested too deeply" in refused.detail


@pytest.mark.parametrize("codec", ["json", "binary"])
def test_a_label_timestamp_in_milliseconds_is_refused(codec: str) -> None:
    now = time.time()
    if codec == "json":
        late, ok = (
            encode_label_json("r1", 1, timestamp=now * 1000),
            encode_label_json("r1", 1, timestamp=now),
        )
        content_type = None
    else:
        late = encode_label_binary(SPEC, "r1", 1, timestamp=now * 1000)
        ok = encode_label_binary(SPEC, "r1", 1, timestamp=now)
        content_type = LABEL_CONTENT_TYPE.encode()
    refused = _refusal(late, content_type)
    assert refused.reason == "bad_timestamp" and "ahead" in refused.detail
    assert decode_label(SPEC, ok, content_type, b"r1", now).timestamp == pytest.approx(now)
