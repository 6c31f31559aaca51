"""The JSON wire format (``application/json``): its typed struct, encoder and decoder.

A record value is a UTF-8 JSON object (no byte-order mark)
``{"features": [...], "label": ..., "weight": 1.0, "timestamp": 1700000000.0}``. ``features``
is a flat list, or nested lists for images and sequences, shaped like ``model.input_shape``;
``label`` is an int class (``true``/``false`` also work for a binary task), a float
(regression with ``target_dim == 1``) or a list of ``target_dim`` floats; ``weight``
(optional, default 1) must be finite and >= 0; ``timestamp`` (optional, epoch seconds)
defaults to the Kafka record timestamp. Unknown fields are ignored.

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
from collections.abc import Iterator, Sequence
from functools import lru_cache
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any, Generic, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from streamtrain.gc_pause import gc_paused
from streamtrain.spec import SampleSpec
from streamtrain.wire.decoded import Decoded, Labels, finish
from streamtrain.wire.json_checks import read_record, stack_numbers
from streamtrain.wire.rejects import Reject, SampleError

_FEATURES = attrgetter("features")
_LABEL = attrgetter("label")
_WEIGHT = attrgetter("weight")
_TIMESTAMP = attrgetter("timestamp")

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

    def to_json(self) -> bytes:
        return encode_json(self.features, self.label, self.weight, self.timestamp)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars to the JSON-able Python values they hold."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


def encode_json(
    features: Any, label: Any, weight: float | None = None, timestamp: float | None = None
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
    """Decode JSON values: the typed decoder per record (one C call each), one array per
    field for the whole poll, then the checks of :func:`~streamtrain.wire.decoded.finish`.

    1. A poll of plain ASCII values that all decode typed is the fast path: no Python work
       per record but reading the struct fields.
    2. Otherwise each value is tried typed and, if refused (or not ASCII), read by
       :func:`json_checks.read_record`, which accepts it or says why not.
    """
    if all(map(bytes.isascii, values)):  # msgspec skips unknown fields without checking UTF-8
        with gc_paused():  # the records' lists are freed before collection resumes
            decoded = _decode_typed(spec, values)
        if decoded is not None:
            return finish(spec, decoded, record_ts)
    with gc_paused():
        return _decode_each(spec, values, record_ts)


def _decode_typed(spec: SampleSpec, values: Sequence[bytes]) -> Decoded | None:
    """Every value through the typed decoder, or None when it refuses one.

    The decoder guarantees each record's shape, so the columns are filled with C-level
    passes (``fromiter`` over the flattened feature lists), without the pass ``np.array``
    over nested lists spends discovering their shape.
    """
    try:
        samples = list(map(typed_decoder(spec).decode, values))
    except (msgspec.DecodeError, RecursionError):  # some record needs a closer look
        return None
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
        return Decoded(
            rows=np.arange(n, dtype=np.int64),
            features=np.fromiter(flat, np.float32, n * spec.feature_size).reshape(
                n, *spec.feature_shape
            ),
            labels=labels,
            weights=weights.astype(np.float32),
            timestamps=np.array(list(map(_TIMESTAMP, samples)), np.float64),
        )


def _label_rows(spec: SampleSpec, labels: list[Any]) -> list[Any]:
    """Regression labels as one list per sample (with ``target_dim`` 1 a bare number is one)."""
    if spec.target_dim == 1:
        return [x if type(x) is list else [x] for x in labels]
    return labels


def _decode_each(
    spec: SampleSpec, values: Sequence[bytes], record_ts: npt.NDArray[np.float64]
) -> Decoded:
    """The slow path of :func:`decode_json`: record by record, typed first."""
    decode = typed_decoder(spec).decode
    rejects: dict[int, Reject] = {}
    rows: list[int] = []
    feats: list[Any] = []
    labels: list[Any] = []
    weights: list[float] = []
    stamps: list[float] = []
    for i, value in enumerate(values):
        try:
            if not value.isascii():
                value.decode("utf-8")  # msgspec would not check the unknown fields
            sample = decode(value)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            fields = read_record(spec, value)
            if isinstance(fields, Reject):
                rejects[i] = fields
                continue
            feature, label, weight, stamp = fields
        else:
            feature, label = sample.features, sample.label
            weight = 1.0 if sample.weight is None else sample.weight
            stamp = np.nan if sample.timestamp is None else sample.timestamp
        rows.append(i)
        feats.append(feature)
        labels.append(label)
        weights.append(weight)
        stamps.append(stamp)
    if not rows:
        return Decoded.nothing(spec, rejects)
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
            rejects=rejects,
        )
    if bad:
        for j, reject in bad.items():
            rejects[rows[j]] = reject
        good = np.ones(len(rows), bool)
        good[list(bad)] = False
        decoded = decoded.keep(good)
    return finish(spec, decoded, record_ts)
