"""The prediction-log and label record codecs: round trips, bounded framing, clear refusals."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import encode_binary, encode_binary_v2
from streamtrain.wire.label_record import (
    LABEL_CONTENT_TYPE,
    LabelError,
    decode_label,
    encode_label_binary,
    encode_label_json,
    with_label,
)
from streamtrain.wire.prediction_record import (
    PredictionRecord,
    PredictionRecordError,
    decode_prediction,
    encode_prediction,
)

BINARY = SampleSpec(feature_shape=(3,), task="binary")
MULTI = SampleSpec(feature_shape=(3,), task="multiclass", num_classes=4)
REG = SampleSpec(feature_shape=(3,), task="regression", target_dim=2)
LABEL_TYPE = LABEL_CONTENT_TYPE.encode()


def _record(sample: bytes, request_id: str = "req-1") -> PredictionRecord:
    return PredictionRecord(request_id, 1700000000.25, 7, "run-x", (0.1, 0.9), sample)


def test_prediction_round_trip_keeps_the_sample_bytes() -> None:
    sample = encode_binary(BINARY, [0.1, -2.5, 3.0], 0, timestamp=1700000000.25)
    decoded = decode_prediction(encode_prediction(_record(sample, "ünïcode-id")))
    assert decoded.sample == sample
    assert decoded.request_id == "ünïcode-id"
    assert decoded.model_version == 7 and decoded.run_id == "run-x"
    assert decoded.outputs == pytest.approx((0.1, 0.9))


@pytest.mark.parametrize("cut", [0, 3, 20, 23, 30])
def test_truncated_prediction_is_undecodable(cut: int) -> None:
    value = encode_prediction(_record(b""))[:cut]
    with pytest.raises(PredictionRecordError) as info:
        decode_prediction(value)
    assert info.value.reason == "undecodable"


def test_prediction_announcing_more_outputs_than_sent_is_refused_without_allocating() -> None:
    value = bytearray(encode_prediction(_record(b"")))
    count_at = len(value) - 8 - 4
    struct.pack_into("<I", value, count_at, 2**32 - 1)
    with pytest.raises(PredictionRecordError, match="outputs needs"):
        decode_prediction(bytes(value))


def test_prediction_ids_are_bounded() -> None:
    with pytest.raises(PredictionRecordError) as info:
        encode_prediction(_record(b"", "x" * 257))
    assert info.value.reason == "bad_id"
    with pytest.raises(PredictionRecordError):
        encode_prediction(_record(b"", ""))


def test_wrong_magic_is_named() -> None:
    value = b"XXXX" + encode_prediction(_record(b""))[4:]
    with pytest.raises(PredictionRecordError, match="magic"):
        decode_prediction(value)


@pytest.mark.parametrize(
    ("spec", "label", "expected"),
    [(BINARY, True, 1), (MULTI, 3, 3), (MULTI, 2.0, 2), (REG, [0.5, -1.0], (0.5, -1.0))],
)
def test_json_and_binary_labels_decode_alike(
    spec: SampleSpec, label: object, expected: object
) -> None:
    js = decode_label(spec, encode_label_json("r", label, 0.5), None, b"r", 9.0)
    assert (js.request_id, js.label, js.weight, js.timestamp) == ("r", expected, 0.5, 9.0)
    value = label if not isinstance(label, bool) else int(label)
    bn = decode_label(spec, encode_label_binary(spec, "r", value, 0.5), LABEL_TYPE, b"r", 9.0)
    assert bn == js


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"not json", None, "undecodable"),
        (b"[1]", None, "undecodable"),
        (b'{"label": 1}', None, "bad_id"),
        (b'{"id": "a", "label": 1}', b"b", "bad_id"),
        (b'{"id": "a", "label": 4}', None, "bad_label"),
        (b'{"id": "a", "label": 1.5}', None, "bad_label"),
        (b'{"id": "a"}', None, "bad_label"),
        (b'{"id": "a", "label": 1, "weight": -1}', None, "bad_weight"),
        (b'{"id": "a", "label": 1, "timestamp": "x"}', None, "bad_timestamp"),
        (b"", None, "undecodable"),
    ],
)
def test_bad_json_labels_are_named(value: bytes, key: bytes | None, reason: str) -> None:
    with pytest.raises(LabelError) as info:
        decode_label(MULTI, value, None, key, 1.0)
    assert info.value.reason == reason
    assert "\n" not in str(info.value)


def test_json_label_takes_its_id_from_the_key() -> None:
    assert decode_label(MULTI, b'{"label": 2}', None, b"k-9", 1.0).request_id == "k-9"


def test_bad_binary_labels_are_named() -> None:
    good = encode_label_binary(MULTI, "abc", 1)
    with pytest.raises(LabelError, match="expected 24 plus"):
        decode_label(MULTI, good[:24], LABEL_TYPE, None, 1.0)
    with pytest.raises(LabelError) as info:
        decode_label(MULTI, encode_label_binary(MULTI, "abc", 7), LABEL_TYPE, None, 1.0)
    assert info.value.reason == "bad_label"
    with pytest.raises(LabelError) as info:
        decode_label(MULTI, good, b"text/csv", None, 1.0)
    assert info.value.reason == "unknown_content_type"
    nan_label = encode_label_binary(REG, "abc", [math.nan, 1.0])
    with pytest.raises(LabelError) as info:
        decode_label(REG, nan_label, LABEL_TYPE, None, 1.0)
    assert info.value.reason == "non_finite"


def test_with_label_keeps_every_feature_and_sparse_byte() -> None:
    sparse_spec = SampleSpec(feature_shape=(3,), task="multiclass", num_classes=4)
    served = encode_binary(sparse_spec, np.asarray([0.1, 1e-30, -7.25], np.float32), 0, 1.0, 5.0)
    joined = with_label(sparse_spec, served, 3, 0.5, 9.5)
    assert joined[:4] == served[:4] and joined[24:] == served[24:]
    assert struct.unpack_from("<dfq", joined, 4) == (9.5, 0.5, 3)
    reg = encode_binary(REG, [1.0, 2.0, 3.0], [0.0, 0.0])
    joined_reg = with_label(REG, reg, (1.5, -2.0), 1.0, 3.0)
    assert np.frombuffer(joined_reg[16:24], "<f4").tolist() == [1.5, -2.0]
    assert joined_reg[24:] == reg[24:]


def test_with_label_keeps_a_v2_tail() -> None:
    from streamtrain.sample.spec import SparseFeature

    spec = SampleSpec((2,), "binary", sparse=(SparseFeature("user", "user"),))
    served = encode_binary_v2(spec, [1.0, 2.0], 0, sparse={"user": [5, -9]})
    joined = with_label(spec, served, 1, 1.0, 4.0)
    assert joined[24:] == served[24:] and joined[:4] == b"STS2"
    with pytest.raises(ValueError, match="magic"):
        with_label(spec, b"JUNK" + served[4:], 1, 1.0, 4.0)
