"""The join of one partition pair: logged predictions meet the labels that arrive later.

One :class:`PartitionState` per partition number ``p`` holds what predictions ``p`` and
labels ``p`` left open. It knows nothing of Kafka: it takes records, and returns
:data:`Action` values (emit a sample, dead-letter a record, count an expiry) for the caller
to carry out. The rules, in order of precedence:

* A label whose prediction is pending joins it: the served sample with the label written in
  (features bit for bit as served) is emitted, outcome ``joined``.
* A label for an id already resolved is dead-lettered: ``duplicate`` if the id was joined (the
  first label wins), ``late`` if its prediction expired. Ids are remembered ``remember_s``
  past their window (at most ``max_remembered_ids`` of them).
* A label with no prediction yet waits until the prediction log has been read
  ``label_wait_s`` past the label's timestamp, then goes out as ``unknown_id``. A second label
  for a waiting id is a ``duplicate``.
* A shadow row (computed, never answered: :mod:`streamtrain.serve.protocol.split`) is skipped;
  only served quality (:mod:`streamtrain.quality`) reads it.
* A prediction expires once the labels log has been read past ``served_at + window_s``
  (event time, see :meth:`PartitionState.saw_labels_until`): it is dropped or emitted with
  the default label (outcome ``default_label``), as the policy says.

``already_emitted`` carries the ids that the samples topic shows as emitted after the last
checkpoint (:mod:`streamtrain.join.recovery`): resolving one of them emits nothing again and
adopts the outcome that was emitted, which is what makes a replay after kill -9 exact.

>>> from streamtrain.sample.spec import SampleSpec
>>> from streamtrain.wire import encode_binary
>>> from streamtrain.wire.label_record import encode_label_json
>>> from streamtrain.wire.prediction_record import PredictionRecord, encode_prediction
>>> spec = SampleSpec(feature_shape=(2,), task="binary")
>>> state = PartitionState(0, JoinPolicy(spec, window_s=30.0))
>>> served = encode_binary(spec, [0.5, 1.0], 0)
>>> logged = encode_prediction(PredictionRecord("r1", 100.0, 7, "run", (0.2, 0.8), served))
>>> state.add_prediction(SourceRecord("predictions", 0, 0, 100_000, b"r1", logged, ()))
[]
>>> label = SourceRecord("labels", 0, 0, 104_000, b"r1", encode_label_json("r1", 1), ())
>>> [(a.request_id, a.outcome, a.label_delay_s) for a in state.add_label(label)]
[('r1', 'joined', 4.0)]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from streamtrain.kafka.records import KafkaRecord
from streamtrain.sample.record_mark import RecordMark, mark_of
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import BINARY_MAGIC, BINARY_MAGIC_V2
from streamtrain.wire.content_type import content_type_of
from streamtrain.wire.label_record import (
    Label,
    LabelError,
    LabelReason,
    LabelRecord,
    decode_label,
    with_label,
)
from streamtrain.wire.prediction_record import (
    PredictionReason,
    PredictionRecordError,
    decode_prediction,
)

Outcome = Literal["joined", "default_label"]
"""How an emitted sample got its label (the ``streamtrain-join-outcome`` header)."""
ExpiryCause = Literal["window", "evicted"]
EXPIRY_CAUSES: tuple[ExpiryCause, ...] = get_args(ExpiryCause)
WRONG_PARTITION = "wrong_partition"
"""An ``unknown_id`` label placed by another partitioner (:mod:`streamtrain.join.label_routing`)."""
# Every (source, reason) a record may be dead-lettered for: the metric's closed label set.
DEAD_LETTER_REASONS: tuple[tuple[str, str], ...] = (
    *(
        ("labels", r)
        for r in (*get_args(LabelReason), "unknown_id", WRONG_PARTITION, "late", "duplicate")
    ),
    *(("predictions", r) for r in (*get_args(PredictionReason), "duplicate")),
)


@dataclass(frozen=True)
class SourceRecord:
    """A consumed record as the join keeps it (a pending label is dead-lettered from it)."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # epoch milliseconds, -1 when the broker has none
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]

    @classmethod
    def of(cls, record: KafkaRecord) -> SourceRecord:
        """The fields the join keeps of a consumed record."""
        return cls(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value,
            record.headers,
        )


@dataclass(frozen=True)
class JoinPolicy:
    """What the join does with time and with records that do not pair (``join.*`` settings)."""

    spec: SampleSpec
    window_s: float = 60.0
    default_label: Label | None = None
    """None drops expired predictions; a label emits them with it."""
    default_weight: float = 1.0
    label_wait_s: float = 5.0
    remember_s: float = 600.0
    max_pending_predictions: int = 200_000
    max_pending_labels: int = 100_000
    max_remembered_ids: int = 1_000_000


@dataclass(frozen=True)
class Emit:
    """Send ``value`` (a labelled binary sample) to the samples topic, keyed by the id."""

    request_id: str
    value: bytes
    outcome: Outcome
    label_delay_s: float | None  # label timestamp - served_at, for joined samples


@dataclass(frozen=True)
class DeadLetter:
    """Copy ``record`` to the labels dead-letter topic with ``reason: detail``."""

    record: SourceRecord
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class Expired:
    """A prediction's window ran out (or it was evicted): counted by policy and cause."""

    request_id: str
    cause: ExpiryCause
    emitted: bool


Action = Emit | DeadLetter | Expired


@dataclass(slots=True)  # one per pending prediction: no per-instance __dict__
class PendingPrediction:
    served_at: float
    sample: bytes


@dataclass(slots=True)
class PendingLabel:
    label: LabelRecord
    record: SourceRecord


@dataclass(slots=True)
class Resolved:
    joined: bool  # False: the prediction expired
    served_at: float


@dataclass
class PartitionState:
    """Open predictions and labels of partition ``partition``, and where its inputs stand."""

    partition: int
    policy: JoinPolicy
    predictions: dict[str, PendingPrediction] = field(default_factory=dict)
    labels: dict[str, PendingLabel] = field(default_factory=dict)
    resolved: dict[str, Resolved] = field(default_factory=dict)
    already_emitted: dict[str, Outcome] = field(default_factory=dict)
    predictions_offset: int = 0
    """Next offset of the predictions partition to apply."""
    labels_offset: int = 0
    predictions_mark: RecordMark | None = None
    """Fingerprint of the record before ``predictions_offset`` (join.input_logs)."""
    labels_mark: RecordMark | None = None
    predictions_seen_until: float = 0.0
    """Epoch seconds the prediction log is known to be read up to (record or caught-up time)."""
    labels_seen_until: float = 0.0
    wall_clock: Callable[[], float] = time.time

    # --- inputs -------------------------------------------------------------------------------

    def add_prediction(self, record: SourceRecord) -> list[Action]:
        self.predictions_offset = record.offset + 1
        self.predictions_mark = mark_of(record)
        self._saw_predictions(self._read_up_to(record))
        try:
            logged = decode_prediction(record.value)
        except PredictionRecordError as exc:
            return [DeadLetter(record, exc.reason, exc.detail)]
        if logged.arm == "shadow":  # never answered: served quality scores it, nothing trains
            return []
        rid, sample = logged.request_id, logged.sample
        if not self._sample_fits(sample):
            return [
                DeadLetter(
                    record,
                    "undecodable",
                    f"served sample of {len(sample)} bytes starting {sample[:4]!r} is not a "
                    "binary v1/v2 sample of this model",
                )
            ]
        if rid in self.predictions or rid in self.resolved:
            return [DeadLetter(record, "duplicate", f"request id {rid[:64]!r} was logged before")]
        waiting = self.labels.pop(rid, None)
        if waiting is not None:
            return self._join(rid, logged.served_at, sample, waiting)
        self.predictions[rid] = PendingPrediction(logged.served_at, sample)
        if len(self.predictions) > self.policy.max_pending_predictions:
            oldest = next(iter(self.predictions))
            return self._expire(oldest, self.predictions.pop(oldest), "evicted")
        return []

    def add_label(self, record: SourceRecord) -> list[Action]:
        self.labels_offset = record.offset + 1
        self.labels_mark = mark_of(record)
        stamp = self._stamp(record)
        self.saw_labels_until(self._read_up_to(record))
        try:
            label = decode_label(
                self.policy.spec, record.value, content_type_of(record.headers), record.key, stamp
            )
        except LabelError as exc:
            return [DeadLetter(record, exc.reason, exc.detail)]
        rid = label.request_id
        pending = self.predictions.pop(rid, None)
        if pending is not None:
            return self._join(rid, pending.served_at, pending.sample, PendingLabel(label, record))
        done = self.resolved.get(rid)
        if done is not None and done.joined:
            return [
                DeadLetter(record, "duplicate", f"{rid[:64]!r} was joined; the first label wins")
            ]
        if done is not None:
            window = self.policy.window_s
            return [DeadLetter(record, "late", f"{rid[:64]!r} expired {window:g} s after serving")]
        if rid in self.labels:
            detail = f"{rid[:64]!r} already has a label waiting; the first label wins"
            return [DeadLetter(record, "duplicate", detail)]
        self.labels[rid] = PendingLabel(label, record)
        if len(self.labels) > self.policy.max_pending_labels:
            oldest = self.labels.pop(next(iter(self.labels)))
            cap = self.policy.max_pending_labels
            detail = f"no prediction arrived before {cap} newer labels were waiting"
            return [DeadLetter(oldest.record, "unknown_id", detail)]
        return []

    # --- time ---------------------------------------------------------------------------------

    def saw_labels_until(self, epoch_s: float) -> None:
        """The labels partition has been read up to ``epoch_s``: a record of that timestamp
        was applied, or every record was applied at that wall time (caught up). Expiry is
        measured against this, not the bare wall clock, so after downtime the backlog of
        labels is read before the predictions it completes can expire."""
        self.labels_seen_until = max(self.labels_seen_until, epoch_s)

    def saw_predictions_until(self, epoch_s: float) -> None:
        self._saw_predictions(epoch_s)

    def _saw_predictions(self, epoch_s: float) -> None:
        self.predictions_seen_until = max(self.predictions_seen_until, epoch_s)

    def advance(self) -> list[Action]:
        """Expire predictions past their window, give up on labels that waited long enough,
        and forget resolved ids past ``remember_s``."""
        actions: list[Action] = []
        deadline = self.labels_seen_until - self.policy.window_s
        while self.predictions:
            rid, oldest = next(iter(self.predictions.items()))
            if oldest.served_at > deadline:
                break
            del self.predictions[rid]
            actions += self._expire(rid, oldest, "window")
        wait = self.policy.label_wait_s
        while self.labels:
            rid, waiting = next(iter(self.labels.items()))
            if self._stamp(waiting.record) + wait > self.predictions_seen_until:
                break
            del self.labels[rid]
            detail = f"no prediction with this id was logged within {wait:g} s of the label"
            actions.append(DeadLetter(waiting.record, "unknown_id", detail))
        forget_before = deadline - self.policy.remember_s
        while self.resolved:
            rid, done = next(iter(self.resolved.items()))
            if done.served_at > forget_before:
                break
            del self.resolved[rid]
        return actions

    # --- resolution ---------------------------------------------------------------------------

    def _join(self, rid: str, served_at: float, sample: bytes, got: PendingLabel) -> list[Action]:
        emitted = self.already_emitted.pop(rid, None)
        if emitted is not None:  # emitted before a crash: adopt that outcome, emit nothing
            self._remember(rid, Resolved(emitted == "joined", served_at))
            if emitted == "joined":
                return []
            return [DeadLetter(got.record, "late", f"{rid[:64]!r} expired before its label")]
        self._remember(rid, Resolved(True, served_at))
        label = got.label
        value = with_label(self.policy.spec, sample, label.label, label.weight, label.timestamp)
        return [Emit(rid, value, "joined", label.timestamp - served_at)]

    def _expire(self, rid: str, pending: PendingPrediction, cause: ExpiryCause) -> list[Action]:
        emitted = self.already_emitted.pop(rid, None)
        if emitted is not None:
            self._remember(rid, Resolved(emitted == "joined", pending.served_at))
            return []
        self._remember(rid, Resolved(False, pending.served_at))
        default = self.policy.default_label
        if default is None:
            return [Expired(rid, cause, emitted=False)]
        stamp = pending.served_at + self.policy.window_s
        value = with_label(
            self.policy.spec, pending.sample, default, self.policy.default_weight, stamp
        )
        return [Expired(rid, cause, emitted=True), Emit(rid, value, "default_label", None)]

    def _remember(self, rid: str, done: Resolved) -> None:
        self.resolved[rid] = done
        if len(self.resolved) > self.policy.max_remembered_ids:  # forgotten early: a later
            del self.resolved[next(iter(self.resolved))]  # label for it is unknown_id

    def _sample_fits(self, sample: bytes) -> bool:
        spec = self.policy.spec
        label_bytes = 8 if spec.is_classification else 4 * spec.target_dim
        return sample[:4] in (BINARY_MAGIC, BINARY_MAGIC_V2) and len(sample) >= 16 + label_bytes

    def _read_up_to(self, record: SourceRecord) -> float:
        # A producer clock running ahead must not expire every pending prediction at once.
        return min(self._stamp(record), self.wall_clock())

    def _stamp(self, record: SourceRecord) -> float:
        return record.timestamp / 1000 if record.timestamp >= 0 else self.wall_clock()
