"""Pairs served rows with their labels for served quality, beside the join's own pairing.

The join (:mod:`streamtrain.join.joiner`) hands every record it applies here too. This keeps
its own small memory instead of reading the join's state: the join keeps one pending
prediction per id and no outputs, while a label here must meet every row served under its
id (the live or candidate row, and a shadow row), with the outputs as served. The join keeps
one pairing per partition and writes it, tallies included, into that partition's checkpoint
(:mod:`streamtrain.quality.partitions`, :mod:`streamtrain.quality.checkpoint`), so a row
served before a restart and labelled after it is still scored, once.

* A prediction row counts as served for its (version, arm); it is scored at once when its
  label already came, else it waits (at most ``max_pending`` rows, oldest dropped first).
* A label scores every row waiting under its id and is remembered (at most ``max_labels``
  labels, oldest forgotten first), so a row logged after it (a shadow row's compute finishes
  after the answer) is scored when it arrives. A second label for an id is ignored: the
  first label wins, as in the join.
* A second row of one id and arm (a replayed record) is skipped, as the join dead-letters
  it (remembered for the newest ``max_pending`` rows).
* A record that does not decode is skipped: the join dead-letters it.

>>> from streamtrain.sample.spec import SampleSpec
>>> from streamtrain.quality.books import VersionBooks
>>> from streamtrain.wire.prediction_record import PredictionRecord
>>> spec = SampleSpec((2,), "binary")
>>> pairs = ServedQuality(VersionBooks(spec, keep=4, window_s=60.0))
>>> pairs.prediction(PredictionRecord("r1", 10.0, 7, "run", (0.2, 0.8), b"", "live"))
>>> pairs.prediction(PredictionRecord("r1", 10.0, 8, "run", (0.6, 0.4), b"", "shadow"))
>>> pairs.label("r1", 1)
>>> sorted((r.version, r.arm, r.labelled) for r in pairs.books.report() if r.labelled)
[('7', 'live', 1), ('8', 'shadow', 1)]
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass

from streamtrain.kafka.records import KafkaRecord
from streamtrain.quality.books import VersionBooks
from streamtrain.quality.figures import score_row
from streamtrain.wire.content_type import content_type_of
from streamtrain.wire.label_record import Label, LabelError, decode_label
from streamtrain.wire.prediction_record import (
    Arm,
    PredictionRecord,
    PredictionRecordError,
    decode_prediction,
)


@dataclass(frozen=True, slots=True)
class Served:
    """One served row waiting for its label."""

    version: int
    arm: Arm
    served_at: float
    outputs: tuple[float, ...]


class ServedQuality:
    """Served rows and labels in, :class:`VersionBooks` tallies out (one thread writes)."""

    def __init__(
        self, books: VersionBooks, max_pending: int = 200_000, max_labels: int = 200_000
    ) -> None:
        self.books = books
        self._max_pending = max_pending
        self._max_labels = max_labels
        self._rows: OrderedDict[str, list[Served]] = OrderedDict()
        self._pending_rows = 0
        self._labels: OrderedDict[str, Label] = OrderedDict()
        self._seen: OrderedDict[tuple[str, Arm], None] = OrderedDict()

    def observe(self, record: KafkaRecord, prediction: bool) -> None:
        """A consumed record of the predictions topic (``prediction``) or the labels topic."""
        if prediction:
            with contextlib.suppress(PredictionRecordError):  # the join dead-letters it
                self.prediction(decode_prediction(record.value))
            return
        # the label's own timestamp, else its Kafka record's, as the join reads it
        stamp = record.timestamp / 1000 if record.timestamp >= 0 else 0.0
        try:
            label = decode_label(
                self.books.spec, record.value, content_type_of(record.headers), record.key, stamp
            )
        except LabelError:
            return
        self.label(label.request_id, label.label)

    def prediction(self, logged: PredictionRecord) -> None:
        seen = (logged.request_id, logged.arm)
        if seen in self._seen:
            return
        self._seen[seen] = None
        if len(self._seen) > self._max_pending:
            self._seen.popitem(last=False)
        served = Served(logged.model_version, logged.arm, logged.served_at, logged.outputs)
        self.books.served(served.version, served.arm)
        label = self._labels.get(logged.request_id)
        if label is not None:
            self._score(served, label)
            return
        self._rows.setdefault(logged.request_id, []).append(served)
        self._pending_rows += 1
        while self._pending_rows > self._max_pending:
            _, dropped = self._rows.popitem(last=False)
            self._pending_rows -= len(dropped)

    def label(self, request_id: str, label: Label) -> None:
        if request_id in self._labels:
            return  # the first label wins
        self._labels[request_id] = label
        if len(self._labels) > self._max_labels:
            self._labels.popitem(last=False)
        waiting = self._rows.pop(request_id, None)
        if waiting is None:
            return
        self._pending_rows -= len(waiting)
        for served in waiting:
            self._score(served, label)

    # --- what a checkpoint holds (streamtrain.quality.checkpoint), oldest first --------------

    def waiting(self) -> list[tuple[str, Served]]:
        """The rows waiting for their label, by request id."""
        return [(rid, row) for rid, rows in self._rows.items() for row in rows]

    def remembered(self) -> list[tuple[str, Label]]:
        """The labels remembered for rows still to come."""
        return list(self._labels.items())

    def seen(self) -> list[tuple[str, Arm]]:
        """The (id, arm) of the newest rows, against replayed records."""
        return list(self._seen)

    def restore(
        self,
        waiting: list[tuple[str, Served]],
        remembered: list[tuple[str, Label]],
        seen: list[tuple[str, Arm]],
    ) -> None:
        """Put back what :meth:`waiting`, :meth:`remembered` and :meth:`seen` gave (into an
        empty pairing; the tallies go back through :meth:`VersionBooks.restore`)."""
        for rid, row in waiting:
            self._rows.setdefault(rid, []).append(row)
        self._pending_rows = len(waiting)
        self._labels.update(remembered)
        self._seen.update((key, None) for key in seen)

    def _score(self, served: Served, label: Label) -> None:
        row = score_row(self.books.spec, served.outputs, label)
        self.books.labelled(served.version, served.arm, served.served_at, row)
