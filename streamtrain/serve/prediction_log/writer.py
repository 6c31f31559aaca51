"""The prediction log: every served sample to ``topics.predictions``, never at a request's cost.

Order of events, from which the guarantees in ``docs/serving.md`` follow:

1. :meth:`PredictionLog.submit` runs on the request path once the response is built. It keeps
   the request's arrays as they are (no copy, no encoding) and counts its rows into the
   records *held*, unless that would hold more than ``max_records``: then the request's rows
   are dropped (``queue_full``). It takes one short lock, never blocks on Kafka, never raises.
2. The writer thread takes every waiting request, encodes one record per row
   (:func:`~streamtrain.serve.prediction_log.rows.encode_served`) and sends it keyed by its id.
3. Delivery callbacks only note each outcome; once per cycle the writer settles them: an
   acknowledged record is counted logged and its produce latency observed, a failed one (the
   broker unreachable past ``timeout_s``, retries included) is dropped (``produce_error``).
   Either way it stops being held, so memory stays bounded by ``max_records`` records
   whether the broker is fast, slow or gone.
4. :meth:`PredictionLog.close` (after the front ends stopped) refuses new requests, lets the
   thread send what waits and wait for acknowledgements, all within ``timeout_s``; whatever
   is still held then is dropped (``unflushed``).

The producer is idempotent, so a retry after a lost acknowledgement never writes a record
twice. It is built on the writer thread, retried while Kafka is unreachable: a server starts
and answers whether the broker is up or not, and requests served meanwhile wait in the queue.

>>> log = PredictionLog(spec=spec, topic="streamtrain.predictions",  # doctest: +SKIP
...                     producer=make_producer, max_records=10_000, timeout_s=10.0)
>>> log.start()  # doctest: +SKIP
>>> log.submit(batch)  # doctest: +SKIP
>>> log.close()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from streamtrain.kafka import ProduceTimeout, RecordProducer
from streamtrain.metrics import (
    SERVE_PREDICTION_LOG_DROPPED,
    SERVE_PREDICTION_LOG_PRODUCE_SECONDS,
    SERVE_PREDICTION_LOG_QUEUE,
    SERVE_PREDICTION_LOG_RECORD_BYTES,
    SERVE_PREDICTION_LOG_RECORDS,
)
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.prediction_log.rows import ServedBatch, encode_served
from streamtrain.wire import CONTENT_TYPE_HEADER
from streamtrain.wire.prediction_record import PREDICTION_CONTENT_TYPE

log = logging.getLogger(__name__)

DROP_REASONS = ("queue_full", "produce_error", "unflushed", "encode_error")
# While records are held, how often the writer takes what arrived: at most this much is added
# to a record's way to Kafka (the join's window is seconds), and a busy server's requests are
# encoded and sent in batches (bench/prediction_log.py measured the writer's CPU per record
# falling by a third from a 5 ms to a 50 ms cycle).
_CYCLE_S = 0.02
_WARN_EVERY_S = 30.0


class PredictionLog:
    """A bounded queue of served requests and the thread that writes them to Kafka."""

    def __init__(
        self,
        *,
        spec: SampleSpec,
        topic: str,
        producer: Callable[[], RecordProducer],
        max_records: int,
        timeout_s: float,
        connect_backoff_s: float = 1.0,
    ) -> None:
        self._spec = spec
        self._topic = topic
        self._make_producer = producer
        self._max_records = max_records
        self._timeout_s = timeout_s
        self._connect_backoff_s = connect_backoff_s
        self._headers = [(CONTENT_TYPE_HEADER, PREDICTION_CONTENT_TYPE.encode())]
        self._lock = threading.Lock()
        self._waiting: deque[ServedBatch] = deque()
        # Delivery outcomes (error or None, latency), appended by the producer's callbacks and
        # settled by the writer once per cycle: one lock per cycle, not one per record.
        self._settled: deque[tuple[BaseException | None, float]] = deque()
        self._held = 0  # rows waiting plus records sent and not yet acknowledged or failed
        self._closed = False  # no more submits
        self._finished = False  # held records were written off; late callbacks are ignored
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._deadline = 0.0  # monotonic time close() stops waiting for the broker
        self._last_warning = -_WARN_EVERY_S
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._dropped = {
            reason: SERVE_PREDICTION_LOG_DROPPED.labels(reason) for reason in DROP_REASONS
        }
        # Read at scrape time: nothing on the request path updates it.
        SERVE_PREDICTION_LOG_QUEUE.set_function(lambda: self._held)

    @property
    def held(self) -> int:
        """Records waiting to be sent or not yet acknowledged."""
        return self._held

    def start(self) -> None:
        self._thread.start()

    def submit(self, batch: ServedBatch) -> bool:
        """Queue one answered request's rows; False (and counted) when they are dropped."""
        rows = batch.rows
        with self._lock:
            accepted = not self._closed and self._held + rows <= self._max_records
            if accepted:
                self._held += rows
                self._waiting.append(batch)
        if not accepted:
            self._dropped["unflushed" if self._closed else "queue_full"].inc(rows)
            return False
        if not self._wake.is_set():
            self._wake.set()
        return True

    def close(self) -> None:
        """Send what waits and wait for acknowledgements, at most ``timeout_s`` in all."""
        self._deadline = time.monotonic() + self._timeout_s
        with self._lock:
            self._closed = True
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive():
            # A kafka-python send blocked on metadata may take up to timeout_s more.
            self._thread.join(2 * self._timeout_s + 1)
        if self._thread.is_alive():
            log.warning("prediction log: the writer did not stop within its timeout")
        self._write_off()

    # --- writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        producer = self._connect()
        if producer is None:
            return
        try:
            self._pump(producer)
        except Exception:
            log.exception(
                "prediction log: the writer thread failed; served samples are no longer logged"
            )
        finally:
            self._finish(producer)

    def _connect(self) -> RecordProducer | None:
        while not self._closing.is_set():
            try:
                return self._make_producer()
            except Exception as exc:
                self._warn(
                    "prediction log: cannot create its Kafka producer (%s); retrying, served "
                    "samples wait in the queue (serve.prediction_log_queue)",
                    exc,
                )
                self._closing.wait(self._connect_backoff_s)
        return None

    def _pump(self, producer: RecordProducer) -> None:
        """Sleep while nothing is held; else wake every ``_CYCLE_S`` and send every request
        that arrived meanwhile as one vectorised encode, so a busy server pays one thread
        wake-up and one encode call per cycle, not per request."""
        while True:
            if self._closing.is_set():
                pass
            elif self._held == 0:
                self._wake.wait()
            else:
                self._closing.wait(_CYCLE_S)
            self._wake.clear()
            with self._lock:
                batches = list(self._waiting)
                self._waiting.clear()
            if batches and self._closing.is_set() and time.monotonic() >= self._deadline:
                self._release(sum(batch.rows for batch in batches), "unflushed")
            elif batches:
                self._send(producer, batches)
            producer.poll(0)  # confluent-kafka runs delivery callbacks only in poll/flush
            self._settle()
            if self._closing.is_set() and not batches:
                return

    def _send(self, producer: RecordProducer, batches: list[ServedBatch]) -> None:
        for key, value in self._encode(batches):
            SERVE_PREDICTION_LOG_RECORD_BYTES.observe(len(value))
            delivered = functools.partial(self._delivered, time.perf_counter())
            try:
                producer.produce(
                    self._topic, value, key=key, headers=self._headers, on_delivery=delivered
                )
            except Exception as exc:
                self._failed(exc)

    def _encode(self, batches: list[ServedBatch]) -> list[tuple[bytes, bytes]]:
        """Every row's record; should that fail, request by request, so only the request
        that cannot be encoded is dropped (``encode_error``)."""
        try:
            return encode_served(self._spec, batches)
        except Exception:
            records = []
            for batch in batches:
                try:
                    records += encode_served(self._spec, [batch])
                except Exception:
                    log.exception("prediction log: cannot encode request %r", batch.request_id)
                    self._release(batch.rows, "encode_error")
            return records

    def _delivered(self, sent_at: float, error: BaseException | None) -> None:
        """Runs on the producer's I/O thread (kafka-python) or in poll/flush (confluent), which
        the writer calls once per cycle: with confluent-kafka the latency noted is to the
        cycle that saw the acknowledgement (up to ``_CYCLE_S`` late), the price of waking the
        writer once per cycle rather than once per acknowledgement."""
        self._settled.append((error, time.perf_counter() - sent_at))

    def _settle(self) -> None:
        """Count the deliveries settled since the last cycle (writer thread)."""
        outcomes = []
        while self._settled:
            outcomes.append(self._settled.popleft())
        if not outcomes:
            return
        with self._lock:
            if self._finished:  # already counted unflushed
                return
            self._held -= len(outcomes)
        errors = [error for error, _ in outcomes if error is not None]
        if errors:
            self._dropped["produce_error"].inc(len(errors))
            self._warn_failed(errors[0], len(errors))
        for error, latency_s in outcomes:
            if error is None:
                SERVE_PREDICTION_LOG_PRODUCE_SECONDS.observe(latency_s)
        SERVE_PREDICTION_LOG_RECORDS.inc(len(outcomes) - len(errors))

    def _failed(self, error: BaseException) -> None:
        self._warn_failed(error, 1)
        self._release(1, "produce_error")

    def _warn_failed(self, error: BaseException, count: int) -> None:
        self._warn(
            "prediction log: %d record(s) to %s not written (%s); dropped, counted in "
            "streamtrain_serve_prediction_log_dropped_records_total{reason=produce_error}",
            count,
            self._topic,
            error,
        )

    def _release(self, rows: int, reason: str) -> None:
        with self._lock:
            if self._finished:
                return
            self._held -= rows
        self._dropped[reason].inc(rows)

    def _finish(self, producer: RecordProducer) -> None:
        try:
            with contextlib.suppress(ProduceTimeout):
                producer.flush(max(0.0, self._deadline - time.monotonic()))
            self._settle()
        finally:
            # Written off before the producer fails what it still holds: those are unflushed.
            self._write_off()
            try:
                producer.close(0.0)
            except Exception:
                log.exception("prediction log: closing its producer failed")

    def _write_off(self) -> None:
        """Count every record still held as ``unflushed``; later callbacks change nothing."""
        with self._lock:
            self._finished = True
            left, self._held = self._held, 0
            self._waiting.clear()
        if left:
            self._dropped["unflushed"].inc(left)
            log.warning("prediction log: %d served samples were not logged at shutdown", left)

    def _warn(self, message: str, *args: object) -> None:
        """One warning per ``_WARN_EVERY_S``: an outage would otherwise log every record."""
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning(message, *args)
