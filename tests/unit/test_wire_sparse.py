"""Sparse ID features on the wire: JSON and binary v2 decode to jagged columns, and every
malformed sparse field is rejected with its own reason."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from streamtrain.sample.sparse_numpy import Jagged, SparseRows
from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.wire import (
    REASONS,
    decode_binary,
    decode_json,
    encode_binary,
    encode_binary_v2,
    encode_json,
    hash_id,
)

SPEC = SampleSpec(
    (2,),
    "binary",
    sparse=(SparseFeature("user", "users", 1), SparseFeature("items", "items", 3)),
)


def test_string_ids_hash_with_blake2b_64_little_endian_signed() -> None:
    # Fixed vectors: a change of hash would silently remap every string ID in a live model.
    assert hash_id("user-42") == -6417657526719176593
    assert hash_id("") == -5426141060434712860


def test_jagged_take_slice_and_concat_keep_each_samples_ids() -> None:
    j = Jagged(np.arange(6), np.array([2, 0, 3, 1], np.int32), np.arange(6, dtype=np.float32))
    assert j.offsets.tolist() == [0, 2, 2, 5, 6]
    assert j[np.array([3, 0])].ids.tolist() == [5, 0, 1]
    assert j[np.array([False, True, True, False])].ids.tolist() == [2, 3, 4]
    assert j[::2].lengths.tolist() == [2, 3]
    assert Jagged.concat([j[:2], j[2:]]).ids.tolist() == j.ids.tolist()
    rows = SparseRows({"a": j, "b": j})
    assert len(rows) == 4 and rows[1:3].features["b"].weights.tolist() == [2.0, 3.0, 4.0]


def test_json_sparse_ids_weights_and_strings_decode_to_jagged_columns() -> None:
    values = [
        encode_json([1, 2], 1, sparse={"user": [123], "items": [4, 5, 6]}),
        encode_json([3, 4], 0, sparse={"user": ["u-9"]}, sparse_weights={"user": [0.5]}),
        encode_json([5, 6], 1),  # no sparse field: no IDs
        b'{"features":[1,true],"sparse":{"items":[7]},"label":1.0}',  # the lenient path
    ]
    out = decode_json(SPEC, values, np.zeros(4))
    assert not out.rejects and out.sparse is not None
    user, items = out.sparse.features["user"], out.sparse.features["items"]
    assert user.ids.tolist() == [123, hash_id("u-9")] and user.lengths.tolist() == [1, 1, 0, 0]
    assert user.weights.tolist() == [1.0, 0.5]
    assert items.ids.tolist() == [4, 5, 6, 7] and items.lengths.tolist() == [3, 0, 0, 1]


BAD_JSON = [
    (b'"sparse":["x"]', "bad_sparse", "expected an object"),
    (b'"sparse":{"items":3}', "bad_sparse", "expected a list of IDs"),
    (b'"sparse":{"items":[1.5]}', "bad_sparse", "is a float"),
    (b'"sparse":{"items":[true]}', "bad_sparse", "is a boolean"),
    (b'"sparse":{"items":[9223372036854775808]}', "bad_sparse", "outside int64"),
    (b'"sparse":{"items":[1,2,3,4]}', "sparse_too_long", "max_length 3"),
    (b'"sparse":{"user":[1,2]}', "sparse_too_long", "max_length 1"),
    (b'"sparse":{"page":[1]}', "unknown_sparse_feature", "declared: user, items"),
    (b'"sparse":{"items":[1]},"sparse_weights":{"items":[-1]}', "bad_sparse_weight", ">= 0"),
    (b'"sparse":{"items":[1]},"sparse_weights":{"items":[1,2]}', "bad_sparse_weight", "2 values"),
    (b'"sparse":{"items":[1]},"sparse_weights":{"items":["a"]}', "bad_sparse_weight", "'a'"),
    (b'"sparse_weights":{"items":[1]}', "bad_sparse_weight", "without IDs"),
]


@pytest.mark.parametrize(("fields", "reason", "detail"), BAD_JSON)
def test_json_malformed_sparse_is_rejected_with_its_reason(
    fields: bytes, reason: str, detail: str
) -> None:
    good = b'{"features":[1,2],"label":1,"sparse":{"items":[1,2]}}'
    for bad in (
        b'{"features":[1,2],"label":1,' + fields + b"}",
        b'{"features":[1,true],"label":1.0,' + fields + b"}",  # via the lenient path too
    ):
        out = decode_json(SPEC, [good, bad, good], np.zeros(3))
        assert out.rows.tolist() == [0, 2]
        assert out.rejects[1].reason == reason and detail in out.rejects[1].detail
        assert out.sparse is not None
        assert out.sparse.features["items"].ids.tolist() == [1, 2, 1, 2]
    assert reason in REASONS


def test_a_model_without_sparse_features_rejects_a_sample_that_sends_some() -> None:
    dense = SampleSpec((2,), "binary")
    out = decode_json(dense, [encode_json([1, 2], 1, sparse={"user": [1]})], np.zeros(1))
    assert out.rejects[0].reason == "unknown_sparse_feature"


def _v2(fixed: bytes, *entries: tuple[int, list[int], list[float] | None]) -> bytes:
    # Written by hand from docs/wire-format.md, not with streamtrain's encoder.
    out = b"STS2" + fixed[4:] + struct.pack("<H", len(entries))
    for index, ids, weights in entries:
        out += struct.pack("<HIB", index, len(ids), weights is not None)
        out += np.asarray(ids, "<i8").tobytes()
        if weights is not None:
            out += np.asarray(weights, "<f4").tobytes()
    return out


def test_binary_v2_and_v1_records_decode_together_in_order() -> None:
    fixed = encode_binary(SPEC, [1.0, 2.0], 1)
    values = [
        _v2(fixed, (1, [4, 5], [0.5, 2.0]), (0, [9], None)),
        fixed,  # layout v1 stays readable: no sparse IDs
        encode_binary_v2(SPEC, [3.0, 4.0], 0, sparse={"items": [7, 8, 9]}),
    ]
    out = decode_binary(SPEC, values, np.zeros(3))
    assert out.rows.tolist() == [0, 1, 2] and not out.rejects
    assert out.features[:, 0].tolist() == [1.0, 1.0, 3.0]
    assert out.sparse is not None
    items, user = out.sparse.features["items"], out.sparse.features["user"]
    assert items.ids.tolist() == [4, 5, 7, 8, 9] and items.lengths.tolist() == [2, 0, 3]
    assert items.weights.tolist() == [0.5, 2.0, 1.0, 1.0, 1.0]
    assert user.ids.tolist() == [9] and user.lengths.tolist() == [1, 0, 0]


def test_binary_v2_malformed_sparse_is_rejected_with_its_reason() -> None:
    fixed = encode_binary(SPEC, [1.0, 2.0], 1)
    good = _v2(fixed, (1, [4], None))
    values = [
        good,
        _v2(fixed, (2, [4], None)),  # feature index 2 is not declared
        _v2(fixed, (1, [1, 2, 3, 4], None)),  # over max_length 3
        _v2(fixed, (1, [4], [float("nan")])),
        _v2(fixed, (1, [4], None), (1, [5], None)),  # the same feature twice
        _v2(fixed, (1, [4], None))[:-3],  # truncated
        _v2(fixed, (1, [4], None)) + b"\x00",  # trailing bytes
        good,
    ]
    out = decode_binary(SPEC, values, np.zeros(len(values)))
    assert out.rows.tolist() == [0, 7]
    reasons = {i: r.reason for i, r in out.rejects.items()}
    assert reasons == {
        1: "unknown_sparse_feature",
        2: "sparse_too_long",
        3: "bad_sparse_weight",
        4: "bad_sparse",
        5: "bad_shape",
        6: "bad_shape",
    }
