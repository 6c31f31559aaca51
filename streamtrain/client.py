"""SampleProducer and LabelProducer: write samples, or the delayed labels of served
predictions, to their topics in either wire format."""

from __future__ import annotations

import math
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from streamtrain.config import Settings
from streamtrain.kafka import KafkaConnection, RecordProducer, record_producer
from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.sample.spec import SampleSpec, spec_for_model
from streamtrain.wire import (
    CONTENT_TYPE_HEADER,
    CONTENT_TYPES,
    Format,
    encode_binary,
    encode_binary_many,
    encode_binary_v2,
    encode_json,
)
from streamtrain.wire.label_record import (
    LABEL_CONTENT_TYPE,
    LabelError,
    decode_label,
    encode_label_binary,
    encode_label_json,
)
from streamtrain.wire.prediction_record import PredictionRecordError, check_request_id

_P = TypeVar("_P", bound="_ClosingProducer")


class _ClosingProducer:
    """What both producers share: flush, close, and a ``with`` block that flushes on success."""

    _producer: RecordProducer

    def flush(self, timeout: float = 60.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        self._producer.close(timeout=timeout)

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.flush()
        self.close()


class SampleProducer(_ClosingProducer):
    """A producer (of the connection's library) that encodes samples and sets their content type.

    >>> from streamtrain.sample.spec import SampleSpec
    >>> with SampleProducer(  # doctest: +SKIP
    ...     spec=SampleSpec(feature_shape=(2,), task="binary"), topic="samples",
    ...     kafka=KafkaConnection("127.0.0.1:9092"), format="binary",
    ... ) as producer:
    ...     producer.send([0.1, 0.2], 1)
    ...     producer.send_many(np.zeros((100, 2)), np.zeros(100, np.int64))
    """

    def __init__(
        self,
        *,
        spec: SampleSpec,
        topic: str,
        kafka: KafkaConnection,
        format: Format = "json",
        linger_ms: int = 5,
        batch_size: int = 256 * 1024,
        acks: Literal[0, 1, "all"] = 1,
    ) -> None:
        if format not in CONTENT_TYPES:
            raise ValueError(f"format={format!r}; expected one of {sorted(CONTENT_TYPES)}")
        self.spec = spec
        self.topic = topic
        self.format = format
        self._headers = [(CONTENT_TYPE_HEADER, CONTENT_TYPES[format].encode())]
        self._producer = record_producer(
            kafka, linger_ms=linger_ms, batch_size=batch_size, acks=acks
        )
        self.sent = 0

    def _send_value(self, value: bytes, key: bytes | None, partition: int | None) -> Future[int]:
        future = self._producer.send(
            self.topic, value, key=key, partition=partition, headers=self._headers
        )
        self.sent += 1
        return future

    def send(
        self,
        features: Any,
        label: Any,
        weight: float | None = None,
        timestamp: float | None = None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> Future[int]:
        """Encode and send one sample; returns a future of the record's offset.

        Raises:
            SampleError: the sample cannot be encoded for ``spec`` (shape, label, NaN in JSON).
        """
        if self.format == "json":
            value = encode_json(features, label, weight, timestamp)
        else:
            value = encode_binary(
                self.spec,
                features,
                label,
                1.0 if weight is None else weight,
                math.nan if timestamp is None else timestamp,
            )
        return self._send_value(value, key, partition)

    def send_many(
        self,
        features: npt.ArrayLike,
        labels: npt.ArrayLike,
        weights: npt.ArrayLike | None = None,
        timestamps: npt.ArrayLike | None = None,
        partition: int | None = None,
        sparse: SparseRows | None = None,
    ) -> int:
        """Send ``n`` samples (features ``[n, *feature_shape]``, and their sparse IDs for a
        spec that declares sparse features); returns ``n``."""
        if sparse is not None:
            values = _sparse_values(
                self.spec, self.format, features, labels, weights, timestamps, sparse
            )
        elif self.format == "binary":
            values = encode_binary_many(self.spec, features, labels, weights, timestamps)
        else:
            feats = np.asarray(features).tolist()
            labs = np.asarray(labels).tolist()
            ws = [None] * len(feats) if weights is None else np.asarray(weights).tolist()
            ts = [None] * len(feats) if timestamps is None else np.asarray(timestamps).tolist()
            values = [encode_json(*row) for row in zip(feats, labs, ws, ts, strict=True)]
        for value in values:
            self._send_value(value, None, partition)
        return len(values)


class LabelProducer(_ClosingProducer):
    """Send the outcome of a served prediction, keyed by the request id the server returned
    (the response's ``id``; ``docs/labels.md``), in JSON or the binary ``STL1`` layout.

    Each label is checked against the model before it is sent (LabelError says what is wrong),
    so a bad one fails in the application instead of in the join's dead-letter topic. The
    producer is idempotent: a retry never writes a label twice. Labels are placed by the rule
    the prediction log uses (murmur2, :mod:`streamtrain.kafka.partitioner`) whatever
    ``kafka.client`` is, so each meets its prediction on the same partition.

    >>> with LabelProducer.from_settings(settings) as labels:  # doctest: +SKIP
    ...     labels.send(response["id"], 1)
    """

    def __init__(
        self,
        *,
        spec: SampleSpec,
        topic: str,
        kafka: KafkaConnection,
        format: Format = "json",
        linger_ms: int = 5,
    ) -> None:
        if format not in CONTENT_TYPES:
            raise ValueError(f"format={format!r}; expected one of {sorted(CONTENT_TYPES)}")
        self.spec = spec
        self.topic = topic
        self.format = format
        content_type = LABEL_CONTENT_TYPE if format == "binary" else CONTENT_TYPES["json"]
        self._headers = [(CONTENT_TYPE_HEADER, content_type.encode())]
        self._producer = record_producer(kafka, acks="all", idempotent=True, linger_ms=linger_ms)
        self.sent = 0

    @classmethod
    def from_settings(cls, settings: Settings, format: Format = "json") -> LabelProducer:
        """To ``topics.labels`` of the cluster in ``kafka``, for the model in ``model``."""
        return cls(
            spec=spec_for_model(settings.model),
            topic=settings.topics.labels,
            kafka=KafkaConnection.from_settings(settings.kafka),
            format=format,
        )

    def send(
        self,
        request_id: str,
        label: Any,
        weight: float = 1.0,
        timestamp: float | None = None,
    ) -> Future[int]:
        """Encode, check and send the label of ``request_id`` (for a request of several rows,
        of ``"<id>/<row>"``); returns a future of the record's offset.

        Raises:
            LabelError: the id or label does not fit (reason and detail say how).
        """
        try:
            key = check_request_id(request_id)
        except PredictionRecordError as exc:
            raise LabelError("bad_id", exc.detail) from None
        if self.format == "binary":
            stamp = math.nan if timestamp is None else timestamp
            value = encode_label_binary(self.spec, request_id, label, weight, stamp)
        else:
            value = encode_label_json(request_id, label, weight, timestamp)
        decode_label(self.spec, value, self._headers[0][1], key, 0.0)
        future = self._producer.send(self.topic, value, key=key, headers=self._headers)
        self.sent += 1
        return future


def _sparse_values(
    spec: SampleSpec,
    format: str,
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    weights: npt.ArrayLike | None,
    timestamps: npt.ArrayLike | None,
    sparse: SparseRows,
) -> list[bytes]:
    """Record values of samples with sparse IDs: JSON ``sparse`` objects or binary layout v2."""
    feats = np.asarray(features, np.float32)
    labs = np.asarray(labels)
    n = len(feats)
    ws = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    ts = np.full(n, np.nan) if timestamps is None else np.asarray(timestamps, np.float64)
    columns = {name: (j.ids, j.offsets, j.weights) for name, j in sparse.features.items()}
    values = []
    for i in range(n):
        ids = {name: c[0][c[1][i] : c[1][i + 1]] for name, c in columns.items()}
        id_weights = {name: c[2][c[1][i] : c[1][i + 1]] for name, c in columns.items()}
        if format == "binary":
            values.append(
                encode_binary_v2(
                    spec, feats[i], labs[i], float(ws[i]), float(ts[i]), ids, id_weights
                )
            )
        else:
            stamp = None if math.isnan(ts[i]) else float(ts[i])
            weight = None if weights is None else float(ws[i])
            values.append(encode_json(feats[i], labs[i], weight, stamp, ids, _non_unit(id_weights)))
    return values


def _non_unit(weights: dict[str, Any]) -> dict[str, Any] | None:
    """Per-ID weights worth sending: those of features with a weight other than 1."""
    kept = {name: w for name, w in weights.items() if len(w) and not (w == 1.0).all()}
    return kept or None
