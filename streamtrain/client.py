"""SampleProducer: write samples to the samples topic in either wire format."""

from __future__ import annotations

import math
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamtrain.kafka import KafkaConnection, record_producer
from streamtrain.spec import SampleSpec
from streamtrain.wire import (
    CONTENT_TYPE_HEADER,
    CONTENT_TYPES,
    Format,
    encode_binary,
    encode_binary_many,
    encode_json,
)


class SampleProducer:
    """A producer (of the connection's library) that encodes samples and sets their content type.

    >>> from streamtrain.spec import SampleSpec
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
    ) -> int:
        """Send ``n`` samples (features ``[n, *feature_shape]``); returns ``n``."""
        if self.format == "binary":
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

    def flush(self, timeout: float = 60.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        self._producer.close(timeout=timeout)

    def __enter__(self) -> SampleProducer:
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
