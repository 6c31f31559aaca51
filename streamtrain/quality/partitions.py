"""The join's served quality: one pairing per partition it holds, one set of metrics.

A label pairs with rows of its own partition, as in the join (the servers and the labels'
producer key both by request id), so each partition's pairing and tallies travel with that
partition: into its checkpoint (:mod:`streamtrain.quality.checkpoint`), out on a hand-over
(the member that takes it over loads them), and back to empty when the join starts that
partition over. The metrics add every held partition's tallies up at scrape time
(:func:`~streamtrain.quality.books.merged`): a replica exports the partitions it holds, so
the sum over replicas is the whole stream, and a counter falls (a reset, for ``rate()``)
when a partition leaves.

>>> from streamtrain.sample.spec import SampleSpec
>>> from streamtrain.wire.prediction_record import PredictionRecord
>>> quality = PartitionedQuality(VersionBooks(SampleSpec((2,), "binary"), 4, 60.0))
>>> quality.take(0, None); quality.take(1, None)
>>> quality.of(0).prediction(PredictionRecord("a", 1.0, 7, "run", (0.5, 0.5), b""))
>>> quality.of(1).prediction(PredictionRecord("b", 1.0, 7, "run", (0.5, 0.5), b""))
>>> [(s.version, s.values["served_rows"]) for s in quality.series() if s.arm == "live"]
[('7', 2.0), ('older', 0.0)]
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from streamtrain.kafka.records import KafkaRecord
from streamtrain.metrics.quality import QualitySeries
from streamtrain.quality import checkpoint
from streamtrain.quality.books import VersionBooks, merged
from streamtrain.quality.pairing import ServedQuality


class PartitionedQuality:
    """Pairings by partition; the join thread changes them, a scrape reads them. Built
    with ``shape`` None it is off: it keeps and writes nothing (``join.quality`` false)."""

    def __init__(
        self, shape: VersionBooks | None, max_pending: int = 200_000, max_labels: int = 200_000
    ) -> None:
        self._shape = shape  # spec, kept versions, window: every partition's books alike
        self._max_pending = max_pending
        self._max_labels = max_labels
        self._lock = threading.Lock()
        self._parts: dict[int, ServedQuality] = {}

    def fresh(self) -> ServedQuality:
        """An empty pairing with this join's bounds."""
        shape = self._shape
        if shape is None:
            raise RuntimeError("served quality is off: no pairing to make")
        books = VersionBooks(shape.spec, shape.keep, shape.window_s, shape.max_window_rows)
        return ServedQuality(books, self._max_pending, self._max_labels)

    def observe(self, partition: int, record: KafkaRecord, prediction: bool) -> None:
        """A record the join applies for ``partition`` (see :meth:`ServedQuality.observe`)."""
        if self._shape is None:
            return
        pairs = self._parts.get(partition)
        if pairs is None:
            self.take(partition, None)
            pairs = self._parts[partition]
        pairs.observe(record, prediction)

    def take(self, partition: int, pairs: ServedQuality | None) -> None:
        """Hold ``partition`` with ``pairs`` (from its checkpoint), or empty when None."""
        if self._shape is None:
            return
        with self._lock:
            self._parts[partition] = pairs if pairs is not None else self.fresh()

    def drop(self, *partitions: int) -> None:
        with self._lock:
            for partition in partitions:
                self._parts.pop(partition, None)

    def of(self, partition: int) -> ServedQuality | None:
        return self._parts.get(partition)

    def unpack(self, tensors: Mapping[str, npt.NDArray[Any]], doc: Any) -> ServedQuality | None:
        """A partition's pairing from its state file (:func:`checkpoint.unpack`); None when off."""
        return None if self._shape is None else checkpoint.unpack(self.fresh, tensors, doc)

    def series(self) -> list[QualitySeries]:
        """Every held partition's tallies added up, as the metrics export them."""
        if self._shape is None:
            return []
        with self._lock:
            parts = [p.books for p in self._parts.values()]
        return merged(self._shape, parts).series()
