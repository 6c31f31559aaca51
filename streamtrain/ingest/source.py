"""KafkaSampleSource: micro-batches of validated samples from a Kafka topic.

Position semantics (the trainer's exactly-once recovery rests on them):

1. Partitions are assigned statically; the start position is the committed offset (earliest
   when none), the earliest, or the latest offset, per ``start_from``.
2. Each poll is decoded in bulk and appended to a buffer in consumed order.
3. :meth:`next_batch` cuts one batch exactly (see ``streamtrain.ingest.buffer``); its
   rejected records are then counted, dead-lettered and summarised (``reject_report``: a
   rate-limited WARNING, readiness ``samples``), and :meth:`positions` moves
   to the batch's ``next_offsets``. Records fetched but not yet handed out are not part of any
   position.
4. :meth:`seek` drops buffered records of the partitions it moves.
5. A partition whose log is no longer the one read (out of range, a log replaced by an empty
   one, or one whose record at a stored position differs: ``log_watch``, checked at
   :meth:`resume` and after every interruption) is logged, counted and moved per
   ``on_offset_reset`` before its records are used: ``earliest`` (the new log's start),
   ``latest``, or ``fail`` (:class:`~streamtrain.ingest.log_watch.OffsetResetFailed`). A
   partition whose check is not decided yet (no answer in time) contributes no records until
   it is.
6. :meth:`commit` first flushes the dead-letter producer, then commits: a committed offset
   never covers a rejected record that is not yet stored on the dead-letter topic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from streamtrain import metrics
from streamtrain.gc_pause import gc_paused
from streamtrain.ingest.batch_deadline import MicroBatchPolicy
from streamtrain.ingest.buffer import BatchBuffer
from streamtrain.ingest.deadletter import DeadLetterSink, KafkaDeadLetter, LogDeadLetter
from streamtrain.ingest.decode import JsonDecoder, decode_records
from streamtrain.ingest.decode_pool import DecodePool, start_pool
from streamtrain.ingest.log_order import LogOrder
from streamtrain.ingest.log_watch import LogWatch, OffsetResetFailed
from streamtrain.ingest.options import SourceOptions
from streamtrain.ingest.reject_report import RejectReport
from streamtrain.ingest.start_position import partition_ends, seek_start
from streamtrain.ingest.starvation import StarvationWatch
from streamtrain.kafka import KafkaConnection, OffsetOutOfRange, RecordConsumer, record_consumer
from streamtrain.kafka.admin import topic_id
from streamtrain.kafka.fetch_wait import FetchWaitTuner
from streamtrain.kafka.records import KafkaRecord, SettlingRecords
from streamtrain.metrics import export_at_zero
from streamtrain.sample.batch import Batch
from streamtrain.sample.record_mark import RecordMark
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import decode_json
from streamtrain.wire.rejects import REASONS

log = logging.getLogger(__name__)


class KafkaSampleSource:
    """Validated samples from ``topic`` as :class:`~streamtrain.sample.batch.Batch` objects.

    How it reads (partitions, start, batch cutting, dead letters, offset resets, reject
    reports) is one :class:`~streamtrain.ingest.options.SourceOptions`, built from the settings
    by ``SourceOptions.from_settings``.

        >>> with KafkaSampleSource(  # doctest: +SKIP
        ...     spec=SampleSpec(feature_shape=(16,), task="binary"), topic="samples",
        ...     group_id="trainer", kafka=KafkaConnection("127.0.0.1:9092"),
        ...     options=SourceOptions(start_from="earliest"),
        ... ) as source:
        ...     batch = source.next_batch()
        ...     source.commit(batch.next_offsets)
    """

    def __init__(
        self,
        *,
        spec: SampleSpec,
        topic: str,
        group_id: str,
        kafka: KafkaConnection,
        options: SourceOptions = SourceOptions(),
        consumer: RecordConsumer | None = None,
        dead_letter: DeadLetterSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        o = options
        self.spec = spec
        self.topic = topic
        self.max_batch_size = o.max_batch_size
        self.max_record_bytes = o.max_record_bytes
        self._policy = MicroBatchPolicy(o.max_batch_size, o.max_wait_ms, clock)
        self._max_poll = min(max(o.max_batch_size, 500), 100_000)
        self._buffer = BatchBuffer()
        self._merge = LogOrder(o.max_partition_idle_ms, clock) if o.deterministic_batches else None
        self._starvation = StarvationWatch(clock=clock)
        # Set up once the consumer exists (below): it widens that consumer's fetch wait.
        self._fetch_wait: FetchWaitTuner | None = None
        self._closed = False
        self._on_offset_reset = o.on_offset_reset
        self._codec = o.codec
        self._pool: DecodePool | None = None
        self._json_decoder: JsonDecoder = decode_json
        self._marks: dict[int, RecordMark] = {}  # of the record before each handed-out position
        self._rejects = RejectReport(
            topic,
            every_s=o.reject_summary_every_s,
            alarm_after_s=o.all_rejected_alarm_s,
            clock=clock,
        )
        # Closed label sets at 0 from the start: increase() sees the first event (partitions
        # once assigned, below).
        export_at_zero(metrics.INGEST_REJECTED, [(reason,) for reason in REASONS])
        export_at_zero(metrics.INGEST_RECORDS, [(topic,)])
        self._consumer: RecordConsumer = consumer or record_consumer(
            kafka,
            topic=topic,
            group_id=group_id,
            fetch_max_wait_ms=o.fetch_max_wait_ms,
            out_of_range="raise",
        )
        try:
            self._partitions = self._choose_partitions(o.partitions)
            # KIP-516: a re-created topic has a new id (None where the broker has none).
            self.topic_id = topic_id(kafka, topic) if consumer is None else None
            self._consumer.assign(self._partitions)
            assigned = [str(p) for p in self._partitions]
            export_at_zero(metrics.INGEST_OFFSET_RESETS, [(p, o.on_offset_reset) for p in assigned])
            if o.deterministic_batches:
                export_at_zero(metrics.INGEST_PARTITION_WAITS_EXPIRED, [(p,) for p in assigned])
            self._positions = seek_start(self._consumer, self._partitions, o.start_from)
            self._log_watch = LogWatch(self._consumer, self._partitions)
            self._fetch_wait = FetchWaitTuner(
                o.fetch_max_wait_ms, self._consumer.set_fetch_max_wait_ms, clock=clock
            )
            if dead_letter is not None:
                self._dead_letter = dead_letter
            elif o.dead_letter_topic:
                self._dead_letter = KafkaDeadLetter(topic=o.dead_letter_topic, kafka=kafka)
            else:
                self._dead_letter = LogDeadLetter()
            # Started now, so a failure to start them stops the trainer at once.
            self._pool = start_pool(spec, o.decode_workers, o.codec)
            self._json_decoder = self._pool or decode_json
        except BaseException:
            if self._pool is not None:
                self._pool.close()
            self._consumer.close()
            raise
        log.info("reading %s partitions %s from %s", topic, self._partitions, self._positions)

    def _choose_partitions(self, wanted: Sequence[int] | None) -> tuple[int, ...]:
        existing = self._consumer.partitions_of_topic()
        if wanted is None:
            return existing
        missing = sorted(set(wanted) - set(existing))
        if missing:
            raise ValueError(
                f"partitions {missing} do not exist in topic {self.topic!r}, which has "
                f"partitions {list(existing)} (ingest.partitions)"
            )
        return tuple(sorted(set(wanted)))

    @property
    def partitions(self) -> tuple[int, ...]:
        return self._partitions

    def positions(self) -> dict[int, int]:
        """Partition -> next offset to read after every batch returned so far."""
        return dict(self._positions)

    def resume(
        self,
        offsets: Mapping[int, int],
        marks: Mapping[int, RecordMark],
        stored_topic_id: str | None = None,
    ) -> None:
        """:meth:`seek` to stored positions whose last records were ``marks``, in a topic whose
        id was ``stored_topic_id``: a different topic id now is an offset reset of every
        partition at once; otherwise, before any record of those partitions is used, the log is
        checked to still hold those records (semantics 5)."""
        self.seek(offsets)
        if stored_topic_id and self.topic_id and stored_topic_id != self.topic_id:
            why = f"the topic id is {self.topic_id}, not {stored_topic_id}: a re-created topic"
            self._reset({p: why for p in offsets if p in self._partitions})
            return
        known = {p: m for p, m in marks.items() if p in offsets and m.offset + 1 == offsets[p]}
        self._marks.update(known)
        self._log_watch.expect(known)

    def next_batch(self) -> Batch:
        """The next micro-batch: at most ``max_batch_size`` samples. May hold 0 samples and
        still move past rejects. With ``deterministic_batches`` (see ``ingest.log_order``) the
        batches are a function of the log while it is replayed; a caught-up stream still gets
        a batch after about ``max_wait_ms`` (plus one fetch). The cyclic GC is held off for the
        call: its polls build tracked objects per record and no cycles (``gc_pause``)."""
        with gc_paused():
            return self._next_batch()

    def _next_batch(self) -> Batch:
        self._policy.start()
        while self._buffer.samples < self.max_batch_size:
            records = self._poll(self._poll_timeout_ms())
            waiting = self._waiting()
            self._starvation.observe(len(records), waiting)
            if self._fetch_wait is not None:
                self._fetch_wait.observe(len(records), waiting)
            chunk = None
            if records:
                started = time.perf_counter()
                chunk = decode_records(
                    self.spec, records, self.max_record_bytes, self._codec, self._json_decoder
                )
                metrics.INGEST_DECODE_SECONDS.observe(time.perf_counter() - started)
                if isinstance(records, SettlingRecords):  # client objects freed, rejects kept
                    records.settle(chunk.decoded.rejects.keys())
                self._log_watch.note(chunk.records, chunk.partitions)
            if self._merge is None:
                if chunk is not None:
                    self._buffer.add(chunk)
                if self._policy.due(self._buffer.samples):
                    break
            elif self._merge.feed(
                chunk, self._buffer, self._unfinished, self._policy.expired(), self.max_batch_size
            ):
                break
        cut = self._buffer.cut(self.max_batch_size)
        if cut is None:
            self._export_lag()
            self._rejects.tick()
            return Batch.empty(
                self.positions(), backlog=bool(self._unfinished()), marks=self._marks
            )
        batch, rejected = cut
        for record, reject in rejected:
            metrics.INGEST_REJECTED.labels(reject.reason).inc()
            self._dead_letter.send(record, reject)
        self._rejects.add(rejected, batch.records, batch.size)
        self._positions.update(batch.next_offsets)
        self._marks.update(batch.marks)
        metrics.INGEST_RECORDS.labels(self.topic).inc(batch.records)
        metrics.INGEST_SAMPLES.inc(batch.size)
        metrics.INGEST_BATCH_SIZE.observe(batch.size)
        self._export_lag()
        return batch

    def _poll_timeout_ms(self) -> int:
        # Past the deadline while a backlog is still being fetched: short polls, each
        # returning as soon as records arrive.
        return max(self._policy.remaining_ms(), 5) if self._merge else self._policy.remaining_ms()

    def _unfinished(self) -> set[int]:
        """Partitions that may hold records not fetched yet: below the high watermark of the
        last fetch, or with no watermark known yet."""
        marks = {p: self._consumer.highwater(p) for p in self._partitions}
        return {p for p, m in marks.items() if m is None or self._consumer.position(p) < m}

    def _waiting(self) -> int:
        """Records past the fetch position, by the high watermarks of the last fetch."""
        marks = ((p, self._consumer.highwater(p)) for p in self._partitions)
        return sum(max(0, m - self._consumer.position(p)) for p, m in marks if m is not None)

    def _poll(self, timeout_ms: int) -> Sequence[KafkaRecord]:
        """One consumer poll; a partition whose log was replaced is reset first, and one whose
        check is undecided is read again from this poll's first record later: neither
        contributes records from this poll."""
        try:
            records = self._consumer.poll(timeout_ms=timeout_ms, max_records=self._max_poll)
        except OffsetOutOfRange as exc:
            self._reset({p: "the broker reports it out of range" for p in exc.positions})
            return []
        verdict = self._log_watch.check()
        if not verdict.replaced and not verdict.undecided:
            return records
        if verdict.replaced:
            self._reset(verdict.replaced)
        for p in verdict.undecided:
            first = next((r.offset for r in records if r.partition == p), None)
            if first is not None:
                self._consumer.seek(p, first)
        dropped = verdict.replaced.keys() | verdict.undecided
        return [r for r in records if r.partition not in dropped]

    def _reset(self, why: Mapping[int, str]) -> None:
        """Log, count and apply ``on_offset_reset`` to partitions whose log lost the position."""
        policy = self._on_offset_reset
        for p in why:
            metrics.INGEST_OFFSET_RESETS.labels(str(p), policy).inc()
        lost = ", ".join(
            f"partition {p} at offset {self._positions[p]} ({reason})" for p, reason in why.items()
        )
        if policy == "fail":
            message = (
                f"the log of {self.topic} no longer holds the trainer's position: {lost}; "
                "ingest.on_offset_reset=fail stops here (set it to earliest or latest to go on)"
            )
            log.error("%s", message)
            raise OffsetResetFailed(message)
        parts = sorted(why)
        if policy == "earliest":
            targets = {p: self._consumer.log_start(p) for p in parts}
        else:
            targets = partition_ends(self._consumer, self._partitions, parts)
        log.error(
            "the log of %s no longer holds the trainer's position: %s; continuing at %s "
            "(ingest.on_offset_reset=%s)",
            self.topic,
            lost,
            targets,
            policy,
        )
        self.seek(targets)

    def _export_lag(self) -> None:
        for p in self._partitions:
            mark = self._consumer.highwater(p)
            if mark is not None:
                metrics.INGEST_LAG.labels(str(p)).set(max(0, mark - self._positions[p]))

    def seek(self, offsets: Mapping[int, int]) -> None:
        """Read ``partition -> offset`` next; buffered records of those partitions are dropped."""
        unknown = sorted(set(offsets) - set(self._partitions))
        if unknown:
            raise ValueError(
                f"cannot seek partitions {unknown}: this source reads {list(self._partitions)}"
            )
        negative = {p: o for p, o in offsets.items() if o < 0}
        if negative:
            raise ValueError(f"cannot seek to negative offsets {negative}")
        self._buffer.drop_partitions(offsets)
        if self._merge is not None:
            self._merge.drop_partitions(offsets)
        for p, offset in offsets.items():
            self._consumer.seek(p, offset)
            self._positions[p] = offset
            self._marks.pop(p, None)
        self._log_watch.forget(offsets)

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit ``partition -> next offset`` to the consumer group (for lag monitoring).

        1. Flush the dead-letter producer (rejects handed out so far are stored).
        2. Commit the offsets.
        """
        unknown = sorted(set(offsets) - set(self._partitions))
        if unknown:
            raise ValueError(
                f"cannot commit partitions {unknown}: this source reads {list(self._partitions)}"
            )
        self._dead_letter.flush()
        self._consumer.commit(offsets)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._rejects.close()
            self._dead_letter.flush()
            self._dead_letter.close()
        finally:
            if self._pool is not None:  # close() never raises: the consumer is closed next
                self._pool.close()
            self._consumer.close()

    def __enter__(self) -> KafkaSampleSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
