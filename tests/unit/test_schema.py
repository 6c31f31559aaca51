from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import (
    BINARY_MAGIC,
    JsonSample,
    SampleError,
    binary_dtype,
    decode_binary,
    decode_json,
    encode_binary,
    encode_binary_many,
    encode_json,
)

MULTI = SampleSpec(feature_shape=(4,), task="multiclass", num_classes=3)
BINARY = SampleSpec(feature_shape=(2,), task="binary")
REG = SampleSpec(feature_shape=(1, 2, 2), task="regression", target_dim=2)
REG1 = SampleSpec(feature_shape=(3,), task="regression")


def _ts(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) + 100.0


def test_json_round_trip_all_fields() -> None:
    values = [
        encode_json(np.arange(4, dtype=np.float32), np.int64(2), weight=0.5, timestamp=7.0),
        encode_json([1, 2, 3, 4], 0),
    ]
    out = decode_json(MULTI, values, _ts(2))
    assert out.rejects == {}
    assert out.rows.tolist() == [0, 1]
    np.testing.assert_array_equal(out.features, [[0, 1, 2, 3], [1, 2, 3, 4]])
    assert out.labels.tolist() == [2, 0]
    assert out.weights.tolist() == [0.5, 1.0]
    assert out.timestamps.tolist() == [7.0, 101.0]  # second defaults to the record timestamp


def test_json_binary_labels_accept_booleans_and_regression_scalars() -> None:
    out = decode_json(BINARY, [b'{"features":[1,2],"label":true}'], _ts(1))
    assert out.labels.tolist() == [1]
    out = decode_json(REG1, [b'{"features":[1,2,3],"label":1.5}'], _ts(1))
    assert out.labels.tolist() == [[1.5]]
    out = decode_json(REG, [encode_json(np.ones((1, 2, 2)), [0.5, -2.0])], _ts(1))
    assert out.features.shape == (1, 1, 2, 2)
    assert out.labels.tolist() == [[0.5, -2.0]]


def test_binary_round_trip_classification_and_regression() -> None:
    feats = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    values = encode_binary_many(MULTI, feats, np.array([0, 1, 2, 1, 0]), np.full(5, 2.0))
    values.append(encode_binary(MULTI, feats[0], 2, weight=0.25, timestamp=55.0))
    out = decode_binary(MULTI, values, _ts(6))
    assert out.rejects == {}
    np.testing.assert_array_equal(out.features, np.vstack([feats, feats[:1]]))
    assert out.labels.tolist() == [0, 1, 2, 1, 0, 2]
    assert out.weights.tolist() == [2.0] * 5 + [0.25]
    assert out.timestamps.tolist() == [100.0, 101.0, 102.0, 103.0, 104.0, 55.0]

    reg = encode_binary(REG, np.ones((1, 2, 2)), [3.0, 4.0])
    assert len(reg) == binary_dtype(REG).itemsize == 16 + 8 + 16
    out = decode_binary(REG, [reg], _ts(1))
    assert out.labels.tolist() == [[3.0, 4.0]]
    assert out.features.shape == (1, 1, 2, 2)


def test_binary_layout_is_the_documented_one() -> None:
    value = encode_binary(BINARY, [1.5, -2.0], 1, weight=0.5, timestamp=10.0)
    assert value[:4] == BINARY_MAGIC
    assert np.frombuffer(value[4:12], "<f8")[0] == 10.0
    assert np.frombuffer(value[12:16], "<f4")[0] == 0.5
    assert np.frombuffer(value[16:24], "<i8")[0] == 1
    assert np.frombuffer(value[24:32], "<f4").tolist() == [1.5, -2.0]


def test_encoders_refuse_what_cannot_be_valid() -> None:
    with pytest.raises(SampleError, match="non_finite"):
        encode_json([math.nan], 0)
    with pytest.raises(SampleError, match=r"shape \[3\] per sample, expected \[4\]"):
        encode_binary(MULTI, [1, 2, 3], 0)
    with pytest.raises(SampleError, match="target_dim"):
        encode_binary(REG, np.ones((1, 2, 2)), [1.0, 2.0, 3.0])


def test_sample_model_writes_the_json_wire_format() -> None:
    value = JsonSample(features=[1, 2], label=True, timestamp=3.0).to_json()
    assert json.loads(value) == {"features": [1, 2], "label": True, "timestamp": 3.0}
    out = decode_json(BINARY, [value], _ts(1))
    assert out.labels.tolist() == [1] and out.timestamps.tolist() == [3.0]
