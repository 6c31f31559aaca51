"""The JSON format: typed decoding agrees with the record-by-record path; UTF-8 only."""

from __future__ import annotations

import codecs

import numpy as np
import pytest

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import Reject, decode_json, encode_json
from streamtrain.wire.decoded import finish
from streamtrain.wire.json_checks import read_record
from streamtrain.wire.json_format import _lenient_columns

MULTI = SampleSpec(feature_shape=(3,), task="multiclass", num_classes=4)
BIN = SampleSpec(feature_shape=(2,), task="binary")
IMAGE = SampleSpec(feature_shape=(1, 2, 2), task="multiclass", num_classes=3)
REG1 = SampleSpec(feature_shape=(2,), task="regression")
REG2 = SampleSpec(feature_shape=(2,), task="regression", target_dim=2)
GOOD = b'{"features":[1,2,3],"label":1}'


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("spec", "values"),
    [
        (
            MULTI,
            [
                encode_json([0.25, -1, 3e38], 3, weight=0.5, timestamp=12.5),
                b'{"features":[1,2,3],"label":0,"weight":null,"timestamp":null,"extra":[1]}',
                b'{"features":[1,2,3],"label":2,"weight":2}',
            ],
        ),
        (BIN, [b'{"features":[1,2],"label":true}', b'{"features":[1,2],"label":0}']),
        (IMAGE, [encode_json(np.arange(4).reshape(1, 2, 2), 2)]),
        (REG1, [b'{"features":[1,2],"label":1.5}', b'{"features":[1,2],"label":[-2]}']),
        (REG2, [b'{"features":[1,2],"label":[1,2.5]}']),
    ],
)
def test_typed_decoder_and_lenient_record_path_give_the_same_arrays(
    spec: SampleSpec, values: list[bytes]
) -> None:
    stamps = np.arange(len(values), dtype=np.float64) + 1000.0
    typed = decode_json(spec, values, stamps)
    fields = [(i, read_record(spec, value)) for i, value in enumerate(values)]
    rejects: dict[int, Reject] = {}
    each = finish(spec, _lenient_columns(spec, fields, rejects), stamps)  # type: ignore[arg-type]
    assert typed.rejects == each.rejects == rejects == {}
    for name in ("rows", "features", "labels", "weights", "timestamps"):
        _same(getattr(typed, name), getattr(each, name))


def test_what_only_the_lenient_rules_accept_still_decodes_among_typed_records() -> None:
    values = [
        GOOD,
        b'{"features":[1,2,3],"label":2.0}',  # an integral float is a class
        b'{"features":[true,2,3],"label":1}',  # numpy reads booleans among numbers
        GOOD,
    ]
    out = decode_json(MULTI, values, np.zeros(4))
    assert out.rejects == {} and out.rows.tolist() == [0, 1, 2, 3]
    assert out.labels.tolist() == [1, 2, 1, 1]
    assert out.features[2].tolist() == [1.0, 2.0, 3.0]


def test_a_class_beyond_int64_is_out_of_range_not_an_overflow() -> None:
    out = decode_json(MULTI, [GOOD, b'{"features":[1,2,3],"label":%d}' % 2**70], np.zeros(2))
    assert out.rows.tolist() == [0]
    assert out.rejects[1].reason == "bad_label" and "out of range" in out.rejects[1].detail


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (codecs.BOM_UTF16_LE + GOOD.decode().encode("utf-16-le"), "UTF-16 LE byte-order mark"),
        (codecs.BOM_UTF16_BE + GOOD.decode().encode("utf-16-be"), "UTF-16 BE byte-order mark"),
        (GOOD.decode().encode("utf-32"), "UTF-32 LE byte-order mark"),
        (codecs.BOM_UTF8 + GOOD, "UTF-8 byte-order mark"),
        (GOOD.decode().encode("utf-16-le"), "UTF-16 or UTF-32 without a byte-order mark"),
        (GOOD.decode().encode("utf-32-be"), "UTF-16 or UTF-32 without a byte-order mark"),
        (GOOD[:-1] + b',"note":"caf\xe9"}', "byte 0xe9 at position 41 is not UTF-8"),
        (GOOD[:-1] + b',"caf\xc3":1}', "is not UTF-8"),
    ],
)
def test_only_utf8_json_is_a_sample(value: bytes, detail: str) -> None:
    out = decode_json(MULTI, [GOOD, value, GOOD], np.zeros(3))
    assert out.rows.tolist() == [0, 2]
    assert out.rejects[1].reason == "undecodable"
    assert out.rejects[1].detail.startswith("not valid UTF-8 JSON: ")
    assert detail in out.rejects[1].detail


def test_utf8_beyond_ascii_is_accepted_in_fields_the_format_ignores() -> None:
    value = GOOD[:-1] + ',"note":"café ✓"}'.encode()
    out = decode_json(MULTI, [value, GOOD], np.zeros(2))
    assert out.rejects == {} and out.rows.tolist() == [0, 1]


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 100_000,
        b'{"features":' + b"[" * 100_000,
        GOOD[:-1] + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # deep in a skipped field
    ],
)
def test_json_nested_past_the_recursion_limit_is_a_reject_not_a_crash(value: bytes) -> None:
    out = decode_json(MULTI, [GOOD, value], np.zeros(2))
    assert out.rows.tolist() == [0]
    assert out.rejects[1].reason == "undecodable"
    assert "nested too deeply" in out.rejects[1].detail


def test_a_poll_with_rejects_anywhere_keeps_every_sample_in_order() -> None:
    def good(label: int) -> bytes:
        return b'{"features":[%d,2,3],"label":%d}' % (label, label)

    bad, lenient, not_utf8 = b"{", b'{"features":[1,2,3],"label":2.0}', b"\xff" + good(1)
    values = [bad, good(0), good(1), bad, bad, lenient, good(3), not_utf8, good(2), bad]
    out = decode_json(MULTI, values, np.zeros(len(values)))
    assert out.rows.tolist() == [1, 2, 5, 6, 8]
    assert out.labels.tolist() == [0, 1, 2, 3, 2]
    assert out.features[:, 0].tolist() == [0, 1, 1, 3, 2]
    assert sorted(out.rejects) == [0, 3, 4, 7, 9]
    assert "is not UTF-8" in out.rejects[7].detail
