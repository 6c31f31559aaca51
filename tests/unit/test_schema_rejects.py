"""Every reject reason is detected, with a detail that says what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import decode_binary, decode_json, encode_binary, encode_binary_many

SPEC = SampleSpec(feature_shape=(16,), task="multiclass", num_classes=3)
BIN = SampleSpec(feature_shape=(2,), task="binary")
REG = SampleSpec(feature_shape=(2,), task="regression", target_dim=2)
F16 = "[" + ",".join(["1"] * 16) + "]"
F15 = "[" + ",".join(["1"] * 15) + "]"


@pytest.mark.parametrize(
    ("spec", "value", "reason", "detail"),
    [
        (SPEC, b"\xff\xfegarbage", "undecodable", "not valid UTF-8 JSON"),
        (SPEC, b"[1, 2]", "undecodable", "expected a JSON object"),
        (SPEC, b'{"label": 1}', "bad_shape", "features is missing"),
        (
            SPEC,
            f'{{"features":{F15},"label":1}}'.encode(),
            "bad_shape",
            "features has shape [15], expected [16] (model.input_shape)",
        ),
        (SPEC, b'{"features":[[1,2],[3]],"label":1}', "bad_shape", "ragged"),
        (
            SPEC,
            f'{{"features":{F16[:-2]}"x"],"label":1}}'.encode(),
            "bad_shape",
            "only numbers, got strings",
        ),
        (
            SPEC,
            f'{{"features":{F16[:-2]}NaN],"label":1}}'.encode(),
            "non_finite",
            "features[15] is nan",
        ),
        (
            SPEC,
            f'{{"features":{F16[:-2]}1e999],"label":1}}'.encode(),
            "non_finite",
            "features[15] is inf",
        ),
        (
            SPEC,
            f'{{"features":{F16},"label":1.5}}'.encode(),
            "bad_label",
            "label 1.5 is not a class; expected an int class index in [0, 3)",
        ),
        (SPEC, f'{{"features":{F16},"label":3}}'.encode(), "bad_label", "label 3 is out of range"),
        (SPEC, f'{{"features":{F16},"label":-1}}'.encode(), "bad_label", "out of range"),
        (SPEC, f'{{"features":{F16},"label":true}}'.encode(), "bad_label", "label is True"),
        (SPEC, f'{{"features":{F16},"label":"cat"}}'.encode(), "bad_label", "label is a string"),
        (SPEC, f'{{"features":{F16}}}'.encode(), "bad_label", "label is missing"),
        (SPEC, f'{{"features":{F16},"label":NaN}}'.encode(), "non_finite", "label is nan"),
        (BIN, b'{"features":[1,2],"label":2}', "bad_label", "0 or 1 (or true/false)"),
        (REG, b'{"features":[1,2],"label":1.0}', "bad_label", "a list of 2 numbers"),
        (
            REG,
            b'{"features":[1,2],"label":[1.0]}',
            "bad_shape",
            "label has shape [1], expected [2] (model.target_dim)",
        ),
        (REG, b'{"features":[1,2],"label":[1.0, Infinity]}', "non_finite", "not finite"),
        (
            SPEC,
            f'{{"features":{F16},"label":1,"weight":-2}}'.encode(),
            "bad_weight",
            "weight is -2.0, expected a number >= 0",
        ),
        (
            SPEC,
            f'{{"features":{F16},"label":1,"weight":"x"}}'.encode(),
            "bad_weight",
            "expected a number",
        ),
        (
            SPEC,
            f'{{"features":{F16},"label":1,"weight":NaN}}'.encode(),
            "non_finite",
            "weight is nan",
        ),
        (
            SPEC,
            f'{{"features":{F16},"label":1,"timestamp":"now"}}'.encode(),
            "bad_timestamp",
            "expected epoch seconds",
        ),
    ],
)
def test_json_reject(spec: SampleSpec, value: bytes, reason: str, detail: str) -> None:
    # One bad record between two good ones: only it is rejected.
    valid = b'{"features":%s,"label":0}' % (F16.encode() if spec is SPEC else b"[1,2]")
    if spec is REG:
        valid = b'{"features":[1,2],"label":[0,0]}'
    out = decode_json(spec, [valid, value, valid], np.zeros(3))
    assert out.rows.tolist() == [0, 2]
    assert list(out.rejects) == [1]
    assert out.rejects[1].reason == reason
    assert detail in out.rejects[1].detail


def test_binary_rejects() -> None:
    good = encode_binary_many(SPEC, np.ones((2, 16)), np.array([0, 1]))
    values = [
        good[0],
        good[0][:-4],  # wrong length
        b"JUNK" + good[0][4:],  # wrong magic
        encode_binary(SPEC, [np.nan] + [0.0] * 15, 1),
        encode_binary(SPEC, np.zeros(16), 7),  # class out of range
        encode_binary(SPEC, np.zeros(16), 1, weight=-1.0),
        encode_binary(SPEC, np.zeros(16), 1, weight=float("inf")),
        encode_binary(SPEC, np.zeros(16), 1, timestamp=float("inf")),
        good[1],
    ]
    out = decode_binary(SPEC, values, np.zeros(len(values)))
    assert out.rows.tolist() == [0, 8]
    reasons = {i: (r.reason, r.detail) for i, r in out.rejects.items()}
    assert reasons[1][0] == "bad_shape" and "84 bytes, expected 88" in reasons[1][1]
    assert "[16] (model.input_shape)" in reasons[1][1]
    assert reasons[2] == ("undecodable", "binary sample starts with b'JUNK', expected b'STS1'")
    assert reasons[3][0] == "non_finite"
    assert reasons[4][0] == "bad_label" and "label 7 is out of range" in reasons[4][1]
    assert reasons[5][0] == "bad_weight"
    assert reasons[6][0] == "non_finite"
    assert reasons[7][0] == "bad_timestamp"


def test_binary_record_of_another_spec_is_rejected_by_length() -> None:
    other = encode_binary(BIN, [1.0, 2.0], 1)
    out = decode_binary(SPEC, [other], np.zeros(1))
    assert out.rejects[0].reason == "bad_shape"
