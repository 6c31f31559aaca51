"""A sample's sparse features as they arrive (JSON objects or binary v2 tails), checked.

Each declared feature (:class:`~streamtrain.sample.spec.SparseFeature`) is a list of IDs: int64
integers, or strings hashed to int64 by :func:`hash_id`. Optional per-ID weights are finite
numbers >= 0, one per ID. What is wrong gets its own reject reason:

* ``bad_sparse``: ``sparse`` is not an object, or a feature's IDs are not a list of int64s /
  strings (a float, a boolean, a null, an integer outside int64);
* ``sparse_too_long``: more IDs than the feature's ``max_length``;
* ``unknown_sparse_feature``: a name the model does not declare;
* ``bad_sparse_weight``: weights not a list of finite numbers >= 0 of the IDs' length, or
  weights for a feature without IDs.
"""

from __future__ import annotations

import math
from hashlib import blake2b
from typing import Any

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.rejects import Reject

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# name -> (ids, weights or None)
SparseRow = dict[str, tuple[list[int], list[float] | None]]


def hash_id(text: str) -> int:
    """The int64 ID of a string ID: the first 8 bytes of BLAKE2b (``digest_size=8``) of its
    UTF-8, read as a little-endian signed integer. Stable across processes, machines and
    languages (``hashlib`` here; any BLAKE2b library elsewhere), unlike Python's ``hash``.

    >>> hash_id("user-42") == hash_id("user-42") != hash_id("user-43")
    True
    """
    digest = blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def read_sparse(spec: SampleSpec, sparse: Any, weights: Any) -> SparseRow | Reject:
    """The sparse features of one JSON sample (``sparse`` and ``sparse_weights`` objects,
    None when absent) as IDs and weights, or why not."""
    row: SparseRow = {}
    if sparse is None:
        sparse = {}
    if type(sparse) is not dict:
        return Reject("bad_sparse", f"sparse is a {_kind(sparse)}; expected an object of ID lists")
    if weights is None:
        weights = {}
    if type(weights) is not dict:
        return Reject(
            "bad_sparse_weight", f"sparse_weights is a {_kind(weights)}; expected an object"
        )
    declared = {f.name: f for f in spec.sparse}
    for name in list(sparse) + [w for w in weights if w not in sparse]:
        if name not in declared:
            known = ", ".join(declared) or "none (model.sparse is empty)"
            return Reject(
                "unknown_sparse_feature",
                f"sparse feature {name!r} is not declared; declared: {known} (model.sparse)",
            )
    for name, values in sparse.items():
        feature = declared[name]
        ids = read_ids(name, values, feature.max_length)
        if isinstance(ids, Reject):
            return ids
        got = read_weights(name, weights.get(name), len(ids))
        if isinstance(got, Reject):
            return got
        row[name] = (ids, got)
    for name in weights:
        if name not in sparse:
            return Reject("bad_sparse_weight", f"sparse_weights[{name!r}] is given without IDs")
    return row


def read_ids(name: str, values: Any, max_length: int) -> list[int] | Reject:
    """A feature's IDs as int64s (strings hashed), or why not."""
    if type(values) is not list:
        return Reject(
            "bad_sparse", f"sparse[{name!r}] is a {_kind(values)}; expected a list of IDs"
        )
    if len(values) > max_length:
        return Reject(
            "sparse_too_long",
            f"sparse[{name!r}] has {len(values)} IDs, over its max_length {max_length} "
            "(model.sparse)",
        )
    ids = []
    for i, value in enumerate(values):
        kind = type(value)
        if kind is int and INT64_MIN <= value <= INT64_MAX:
            ids.append(value)
        elif kind is str:
            ids.append(hash_id(value))
        else:
            what = "an integer outside int64" if kind is int else f"a {_kind(value)}"
            return Reject(
                "bad_sparse",
                f"sparse[{name!r}][{i}] is {what}; expected an int64 or a string ID",
            )
    return ids


def read_weights(name: str, weights: Any, count: int) -> list[float] | Reject | None:
    """A feature's per-ID weights (None: all 1), or why they are not ``count`` finite
    numbers >= 0."""
    if weights is None:
        return None
    if type(weights) is not list or len(weights) != count:
        what = f"{len(weights)} values" if type(weights) is list else f"a {_kind(weights)}"
        return Reject(
            "bad_sparse_weight",
            f"sparse_weights[{name!r}] is {what}; expected a list of {count} numbers >= 0 "
            "(one per ID)",
        )
    for i, w in enumerate(weights):
        if type(w) not in (int, float) or not math.isfinite(w) or w < 0:
            return Reject(
                "bad_sparse_weight",
                f"sparse_weights[{name!r}][{i}] is {w!r}; expected a finite number >= 0",
            )
    return [float(w) for w in weights]


def _kind(value: Any) -> str:
    names = {str: "string", list: "list", dict: "object", bool: "boolean", float: "float"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)
