"""The JSON wire format (``application/json``): its typed struct, encoder and decoder.

A record value is a UTF-8 JSON object (no byte-order mark)
``{"features": [...], "label": ..., "weight": 1.0, "timestamp": 1700000000.0}``. ``features``
is a flat list, or nested lists for images and sequences, shaped like ``model.input_shape``;
``label`` is an int class (``true``/``false`` also work for a binary task), a float
(regression with ``target_dim == 1``) or a list of ``target_dim`` floats; ``weight``
(optional, default 1) must be finite and >= 0; ``timestamp`` (optional, epoch seconds)
defaults to the Kafka record timestamp. ``sparse`` (optional) maps each declared sparse
feature to a list of IDs (int64, or strings hashed by
:func:`~streamtrain.wire.sparse_fields.hash_id`) and ``sparse_weights`` (optional) gives
per-ID weights for some of them. Unknown fields are ignored.

Decoding is schema-driven: :func:`typed_decoder` turns a :class:`SampleSpec` into a msgspec
decoder of :class:`JsonSample` whose field types carry the exact shape and label range, so the
usual record is parsed and validated in C straight into typed values. Only a record it refuses
goes through :mod:`streamtrain.wire.json_checks`, which accepts what the format's lenient rules
allow and otherwise says why not.

>>> encode_json([0.5, 1.0], 1)
b'{"features":[0.5,1.0],"label":1}'
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any, Generic, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from streamtrain.gc_pause import gc_paused
from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.decoded import Decoded, Labels, finish, merge
from streamtrain.wire.json_checks import Fields, read_record, stack_numbers
from streamtrain.wire.rejects import Reject, SampleError
from streamtrain.wire.sparse_fields import SparseRow, read_sparse

_FEATURES = attrgetter("features")
_LABEL = attrgetter("label")
_WEIGHT = attrgetter("weight")
_TIMESTAMP = attrgetter("timestamp")
_SPARSE = attrgetter("sparse", "sparse_weights")

FeaturesT = TypeVar("FeaturesT")
LabelT = TypeVar("LabelT")


class JsonSample(msgspec.Struct, Generic[FeaturesT, LabelT], frozen=True, gc=False):
    """One sample in the JSON wire format; ``to_json()`` gives the record value.

    The decoder of a spec reads ``JsonSample[<features type>, <label type>]`` (see
    :func:`typed_decoder`). ``weight`` and ``timestamp`` are None when absent.

    >>> JsonSample(features=[1.0, 2.0], label=0, weight=0.5).to_json()
    b'{"features":[1.0,2.0],"label":0,"weight":0.5}'
    """

    features: FeaturesT
    label: LabelT
    weight: float | None = None
    timestamp: float | None = None
    sparse: dict[str, Any] | None = None  # checked by sparse_fields.read_sparse
    sparse_weights: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return encode_json(
            self.features,
            self.label,
            self.weight,
            self.timestamp,
            self.sparse,
            self.sparse_weights,
        )


def _plain(value: Any) -> Any:
    """numpy arrays and scalars to the JSON-able Python values they hold."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def encode_json(
    features: Any,
    label: Any,
    weight: float | None = None,
    timestamp: float | None = None,
    sparse: Mapping[str, Any] | None = None,
    sparse_weights: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON record value of one sample; NaN/Inf are refused (they are not JSON).

    The standard library writes it: unlike msgspec, which writes NaN as ``null``, it refuses
    a non-finite number, so a producer learns of one here and not from a dead letter.

    Raises:
        SampleError: a value is NaN or Inf, or not JSON-serialisable.
    """
    obj: dict[str, Any] = {"features": _plain(features), "label": _plain(label)}
    if weight is not None:
        obj["weight"] = float(weight)
    if timestamp is not None:
        obj["timestamp"] = float(timestamp)
    if sparse is not None:
        obj["sparse"] = {name: _plain(ids) for name, ids in sparse.items()}
    if sparse_weights is not None:
        obj["sparse_weights"] = {name: _plain(w) for name, w in sparse_weights.items()}
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise SampleError(Reject("non_finite", f"cannot encode as JSON: {exc}")) from exc
    except TypeError as exc:
        raise SampleError(Reject("undecodable", f"cannot encode as JSON: {exc}")) from exc


def _exactly(n: int, item: Any) -> Any:
    return Annotated[list[item], msgspec.Meta(min_length=n, max_length=n)]


@lru_cache(maxsize=64)
def typed_decoder(spec: SampleSpec) -> msgspec.json.Decoder[Any]:
    """A decoder of ``JsonSample`` typed for ``spec``: features nested exactly
    ``feature_shape`` deep and long, a class label in range or ``target_dim`` floats.

    It refuses everything the wire format refuses, and a little it accepts (an integral float
    class, booleans among features): those go to :func:`json_checks.read_record`.
    """
    features: Any = float
    for size in reversed(spec.feature_shape):
        features = _exactly(size, features)
    label: Any
    if spec.task == "multiclass":
        label = Annotated[int, msgspec.Meta(ge=0, lt=spec.num_classes)]
    elif spec.task == "binary":
        label = Annotated[int, msgspec.Meta(ge=0, le=1)] | bool
    elif spec.target_dim == 1:
        label = float | _exactly(1, float)
    else:
        label = _exactly(spec.target_dim, float)
    return msgspec.json.Decoder(JsonSample[features, label])


def decode_json(
    spec: SampleSpec, values: Sequence[bytes], record_ts: npt.NDArray[np.float64]
) -> Decoded:
    """Decode JSON values: runs of records through the typed decoder (one C-level ``map`` per
    run), the records it refuses one by one, then one array per field for the whole poll and
    the checks of :func:`~streamtrain.wire.decoded.finish`.

    1. Values that are not valid UTF-8 are found first: msgspec does not check the bytes of
       the fields it skips, so the typed decoder is not shown them.
    2. A run ends at a record the typed decoder refuses (``list.extend`` keeps the samples
       decoded before it); :func:`json_checks.read_record` accepts that record under the
       format's lenient rules or says why not, and the next run goes on from the same
       iterator. A poll with a bad record thus costs little more than one without.
    """
    with gc_paused():  # the records' lists are freed before collection resumes
        rows, samples, lenient, rejects = _read_poll(spec, values)
        parts = []
        if samples:
            parts.append(_typed_columns(spec, rows, samples))
        if lenient:
            parts.append(_lenient_columns(spec, lenient, rejects))
    return finish(spec, merge(spec, parts, rejects), record_ts)


def _read_poll(
    spec: SampleSpec, values: Sequence[bytes]
) -> tuple[list[int], list[JsonSample[Any, Any]], list[tuple[int, Fields]], dict[int, Reject]]:
    """The typed samples (and their rows), the records only the lenient rules accept, and the
    rejects of one poll."""
    decode = typed_decoder(spec).decode
    rows: list[int] = []
    samples: list[JsonSample[Any, Any]] = []
    lenient: list[tuple[int, Fields]] = []
    rejects: dict[int, Reject] = {}

    def read_one(i: int) -> None:
        fields = read_record(spec, values[i])
        if isinstance(fields, Reject):
            rejects[i] = fields
        else:
            lenient.append((i, fields))

    # A value that is not UTF-8 is shown to the typed decoder as b"", which it refuses, so
    # read_one reads (and rejects) the real value.
    shown = values
    not_utf8 = _not_utf8(values)
    if not_utf8:
        shown = list(values)
        for i in not_utf8:
            shown[i] = b""
    remaining = iter(shown)  # map takes a refused value from it before decode raises
    n, pos = len(values), 0
    while pos < n:
        before = len(samples)
        with suppress(msgspec.DecodeError, RecursionError):  # a ValidationError too
            samples.extend(map(decode, remaining))
        decoded = len(samples) - before
        rows.extend(range(pos, pos + decoded))
        pos += decoded
        if pos < n:  # the typed decoder refused values[pos]
            read_one(pos)
            pos += 1
    return rows, samples, lenient, rejects


def _not_utf8(values: Sequence[bytes]) -> list[int]:
    """Positions of the values that are not valid UTF-8, ascending."""
    if all(map(bytes.isascii, values)):
        return []
    bad = []
    for i, value in enumerate(values):
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(i)
    return bad


def _typed_columns(
    spec: SampleSpec, rows: list[int], samples: list[JsonSample[Any, Any]]
) -> Decoded:
    """Columns of typed samples. The decoder guarantees each record's shape, so they are
    filled by C-level passes (``fromiter`` over the flattened feature lists), without the
    pass ``np.array`` over nested lists spends discovering their shape."""
    n = len(samples)
    flat: Iterator[Any] = map(_FEATURES, samples)
    for _ in spec.feature_shape:
        flat = chain.from_iterable(flat)
    weights = np.array(list(map(_WEIGHT, samples)), np.float64)  # None -> NaN: no weight
    weights[np.isnan(weights)] = 1.0  # the typed decoder never yields a NaN of its own
    labels: Labels
    if spec.is_classification:
        labels = np.fromiter(map(_LABEL, samples), np.int64, n)
    else:
        labels = np.array(_label_rows(spec, list(map(_LABEL, samples))), np.float32)
    with np.errstate(over="ignore"):
        decoded = Decoded(
            rows=np.asarray(rows, dtype=np.int64),
            features=np.fromiter(flat, np.float32, n * spec.feature_size).reshape(
                n, *spec.feature_shape
            ),
            labels=labels,
            weights=weights.astype(np.float32),
            timestamps=np.array(list(map(_TIMESTAMP, samples)), np.float64),
        )
    return _with_sparse_columns(spec, decoded, list(map(_SPARSE, samples)))


def _with_sparse_columns(spec: SampleSpec, decoded: Decoded, raw: list[tuple[Any, Any]]) -> Decoded:
    """``decoded`` with the jagged columns of its samples' ``sparse``/``sparse_weights``
    (``raw``, one pair per sample); a sample whose sparse fields are refused is rejected.
    With no sparse feature declared and none sent, nothing is read."""
    if not spec.sparse and not any(s is not None or w is not None for s, w in raw):
        return decoded
    rows: list[SparseRow] = []
    bad: dict[int, Reject] = {}
    for j, (sparse, weights) in enumerate(raw):
        got = read_sparse(spec, sparse, weights)
        if isinstance(got, Reject):
            bad[j] = got
            rows.append({})
        else:
            rows.append(got)
    decoded.sparse = SparseRows.from_lists(spec.sparse_names, rows) if spec.sparse else None
    if not bad:
        return decoded
    for j, reject in bad.items():
        decoded.rejects[int(decoded.rows[j])] = reject
    good = np.ones(len(raw), bool)
    good[list(bad)] = False
    return decoded.keep(good)


def _lenient_columns(
    spec: SampleSpec, lenient: list[tuple[int, Fields]], rejects: dict[int, Reject]
) -> Decoded:
    """Columns of the records only the lenient rules accept; those whose features or label
    do not stack into the spec's shape join ``rejects``."""
    rows = [i for i, _ in lenient]
    feats, labels, weights, stamps, sparse, sparse_weights = (
        list(column) for column in zip(*(f for _, f in lenient), strict=True)
    )
    feat_arr, bad = stack_numbers(feats, spec.feature_shape, "features", "model.input_shape")
    label_arr: Labels
    if spec.is_classification:
        label_arr = np.asarray(labels, dtype=np.int64)
    else:
        label_arr, label_bad = stack_numbers(
            _label_rows(spec, labels), (spec.target_dim,), "label", "model.target_dim"
        )
        bad = label_bad | bad  # a features reject wins over a label reject
    with np.errstate(over="ignore"):
        decoded = Decoded(
            rows=np.asarray(rows, dtype=np.int64),
            features=feat_arr,
            labels=label_arr,
            weights=np.asarray(weights, dtype=np.float32),
            timestamps=np.asarray(stamps, dtype=np.float64),
        )
    good = np.ones(len(rows), bool)
    good[list(bad)] = False
    for j, reject in bad.items():
        rejects[rows[j]] = reject
    if bad:
        decoded = decoded.keep(good)
    pairs = zip(sparse, sparse_weights, strict=True)
    raw = [pair for pair, ok in zip(pairs, good, strict=True) if ok]
    decoded = _with_sparse_columns(spec, decoded, raw)
    rejects.update(decoded.rejects)
    decoded.rejects = {}
    return decoded


def _label_rows(spec: SampleSpec, labels: list[Any]) -> list[Any]:
    """Regression labels as one list per sample (with ``target_dim`` 1 a bare number is one)."""
    if spec.target_dim == 1:
        return [x if type(x) is list else [x] for x in labels]
    return labels
