"""Is the record at a stored position still the one read? A :class:`RecordMark` compared with
the log, through a consumer (:func:`verify_marks`) or a partition reader (:func:`reread_mark`).

The Kafka wing's half of noticing a replaced log (``streamtrain.ingest.log_watch`` explains the
three ways and owns the policy): fetch the record at each mark's offset and say what differs.
The trainer's source and the join (through a consumer) and the snapshot tail (through a
partition reader) share it, so it sits below all three.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streamtrain.kafka.consumer import RecordConsumer
from streamtrain.kafka.errors import OffsetOutOfRange
from streamtrain.kafka.partition_reader import PartitionReader
from streamtrain.kafka.records import KafkaRecord
from streamtrain.sample.record_mark import RecordMark, mark_of

VERIFY_TIMEOUT_S = 5.0  # one try; an undecided partition is tried again on the next poll
_VERIFY_POLL_MS = 50
_VERIFY_RECORDS = 100  # enough for the first record of each partition; no big decode


@dataclass
class LogVerdict:
    """What one check found: partitions whose log was replaced (-> why), and partitions whose
    fingerprint could not be compared yet (their records must not be used until it is)."""

    replaced: dict[int, str] = field(default_factory=dict)
    undecided: set[int] = field(default_factory=set)


def verify_marks(
    consumer: RecordConsumer,
    marks: Mapping[int, RecordMark],
    assigned: Iterable[int] = (),
    timeout_s: float = VERIFY_TIMEOUT_S,
) -> LogVerdict:
    """Fetch the record at each mark's offset from ``consumer``'s topic and compare.

    1. Remember the position of every partition in ``marks``, seek each to its mark's offset.
    2. Poll until each partition returned its record at that offset (compared with the mark),
       a later one (that offset is gone), an out-of-range answer, or a high watermark at or
       below it (the log ends before it); or until ``timeout_s`` passes (undecided).
    3. Seek every partition back to where it was: the caller decides what happens next.
    Records of the other ``assigned`` partitions fetched meanwhile are dropped and their
    positions put back too (the consumer fetches them again).
    """
    verdict = LogVerdict()
    if not marks:
        return verdict
    pending = dict(marks)
    saved = {p: consumer.position(p) for p in pending}
    for p, mark in pending.items():
        consumer.seek(p, mark.offset)
    others_at = {p: consumer.position(p) for p in assigned if p not in pending}
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            try:
                records = consumer.poll(timeout_ms=_VERIFY_POLL_MS, max_records=_VERIFY_RECORDS)
            except OffsetOutOfRange as exc:
                for p in exc.positions:
                    if p in pending:
                        offset = pending.pop(p).offset
                        verdict.replaced[p] = f"the log no longer holds offset {offset}"
                continue
            _compare(records, pending, verdict)
            for p in list(pending):
                high = consumer.highwater(p)
                if high is not None and high <= pending[p].offset:
                    offset = pending.pop(p).offset
                    verdict.replaced[p] = (
                        f"the log ends at {high}, before the record at offset {offset} read before"
                    )
    finally:
        for p, offset in {**saved, **others_at}.items():
            consumer.seek(p, offset)
    verdict.undecided = set(pending)
    return verdict


def _compare(
    records: Sequence[KafkaRecord], pending: dict[int, RecordMark], verdict: LogVerdict
) -> None:
    for record in records:
        mark = pending.get(record.partition)
        if mark is None or record.offset < mark.offset:
            continue
        del pending[record.partition]
        if record.offset > mark.offset:
            verdict.replaced[record.partition] = (
                f"the log has no record at offset {mark.offset} any more (the next is "
                f"{record.offset})"
            )
            continue
        why = mark.differs(mark_of(record))
        if why is not None:
            verdict.replaced[record.partition] = why


def reread_mark(reader: PartitionReader, mark: RecordMark, deadline: float) -> str | None:
    """Why the record at ``mark.offset`` of ``reader``'s partition is not the one read (None
    when it is); :class:`~streamtrain.kafka.ReadTimeout` when the broker does not answer."""
    low, high = reader.bounds(deadline)
    if high <= mark.offset:
        return f"the log ends at {high}, before the record at offset {mark.offset} read before"
    if low > mark.offset:
        return f"the log no longer holds offset {mark.offset} (it starts at {low})"
    verdict = LogVerdict()
    pending = {reader.partition: mark}
    _compare(list(reader.read(mark.offset, mark.offset + 1, deadline)), pending, verdict)
    if pending:
        return f"the log has no record at offset {mark.offset} any more"
    return verdict.replaced.get(reader.partition)
