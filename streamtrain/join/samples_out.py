"""The join's samples producer: tagged records out, the first delivery error kept.

Each sample carries the headers :mod:`streamtrain.join.samples_log` reads back (its join
partition and outcome) and the request id as key. :meth:`SamplesOut.renew` replaces the
producer when the join starts over on logs Kafka lost (:mod:`streamtrain.join.log_lost`): a
producer's state can outlive the broker's (kafka-python's idempotent sequence numbers, refused
by a broker that came back empty), and the old producer's unacknowledged samples belong to
the lost logs. Their delivery reports no longer count.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streamtrain import health
from streamtrain.join.partition_state import Emit
from streamtrain.join.samples_log import JOIN_HEADER, OUTCOME_HEADER, join_tag
from streamtrain.kafka import RecordProducer
from streamtrain.kafka.producer import Delivery, ProduceTimeout
from streamtrain.wire import BINARY_CONTENT_TYPE
from streamtrain.wire.content_type import CONTENT_TYPE_HEADER


class SamplesOut:
    """Produces joined samples to ``topic`` for the join of ``predictions_topic``.

    >>> out = SamplesOut(lambda: record_producer(kafka), "samples", "predictions")  # doctest: +SKIP
    >>> out.emit(0, emit); out.flush(60.0); out.error  # doctest: +SKIP
    """

    def __init__(
        self, make_producer: Callable[[], RecordProducer], topic: str, predictions_topic: str
    ) -> None:
        self.topic = topic
        self._predictions = predictions_topic
        self._make = make_producer
        self._producer = make_producer()
        self.error: BaseException | None = None
        """The first delivery error of the current producer; the join stops on it."""
        self._generation = 0
        self._delivered = self._callback()

    def _callback(self) -> Delivery:
        generation = self._generation

        def delivered(error: BaseException | None) -> None:
            if error is not None and generation == self._generation and self.error is None:
                self.error = error

        return delivered

    def emit(self, partition: int, emit: Emit) -> None:
        headers = [
            (CONTENT_TYPE_HEADER, BINARY_CONTENT_TYPE.encode()),
            (JOIN_HEADER, join_tag(self._predictions, partition).encode()),
            (OUTCOME_HEADER, emit.outcome.encode()),
        ]
        self._producer.produce(
            self.topic,
            emit.value,
            key=emit.request_id.encode(),
            headers=headers,
            on_delivery=self._delivered,
        )

    def poll(self) -> None:
        """Runs the delivery callbacks that are due (confluent-kafka needs the call)."""
        self._producer.poll(0)

    def flush(self, timeout_s: float, give_up: Callable[[], bool] = lambda: False) -> None:
        """Wait until every sample is acknowledged, beating the liveness check each second;
        :class:`ProduceTimeout` after ``timeout_s``, or sooner once ``give_up()`` is true."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
                return
            except ProduceTimeout:
                health.beat()  # waiting on the broker, not stuck
                if time.monotonic() >= deadline or give_up():
                    raise

    def renew(self) -> None:
        """A fresh producer; the old one is closed at once, abandoning what it still holds."""
        old = self._producer
        self._generation += 1
        self._delivered = self._callback()
        self.error = None
        old.close(0)
        self._producer = self._make()

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout_s)
