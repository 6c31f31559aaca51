"""Where rejected records go: counted by reason, logged, and copied to a dead-letter topic.

A dead-lettered record keeps its original key, value and headers, plus
``streamtrain-error`` (``reason: detail``, UTF-8) and ``streamtrain-source``
(``topic/partition/offset``). A failure to write it is counted and logged, never raised:
bad input must not stop training.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Protocol

from prometheus_client import Counter

from streamtrain import metrics
from streamtrain.kafka import KafkaConnection, record_producer
from streamtrain.kafka.records import KafkaRecord

log = logging.getLogger(__name__)

ERROR_HEADER = "streamtrain-error"
SOURCE_HEADER = "streamtrain-source"


class Rejection(Protocol):
    """Why a record is dead-lettered (a sample :class:`Reject`, or the join's reasons);
    ``str()`` gives the ``reason: detail`` header value."""

    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...


class DeadLetterSink(Protocol):
    """Takes rejected records; ``flush`` returns once every one handed over is stored."""

    def send(self, record: KafkaRecord, reject: Rejection) -> None: ...
    def flush(self, timeout: float = 30.0) -> None: ...
    def close(self) -> None: ...


def source_of(record: KafkaRecord) -> str:
    return f"{record.topic}/{record.partition}/{record.offset}"


class LogDeadLetter:
    """Rejects are only counted (by the source) and logged: no dead-letter topic configured."""

    def send(self, record: KafkaRecord, reject: Rejection) -> None:
        log.warning("rejected record %s: %s", source_of(record), reject)

    def flush(self, timeout: float = 30.0) -> None:
        return None

    def close(self) -> None:
        return None


class KafkaDeadLetter:
    """Copies rejected records to ``topic`` with a producer of the connection's library.

    >>> dlq = KafkaDeadLetter(topic="samples.dlq", kafka=KafkaConnection(  # doctest: +SKIP
    ...     "127.0.0.1:9092"))
    """

    def __init__(
        self,
        *,
        topic: str,
        kafka: KafkaConnection,
        errors: Counter = metrics.INGEST_DEAD_LETTER_ERRORS,
    ) -> None:
        self.topic = topic
        self._errors = errors
        self._producer = record_producer(
            kafka,
            acks="all",
            # A rejected record may be up to the broker's limit itself plus our headers.
            max_request_size=16 * 1_048_576,
        )

    def send(self, record: KafkaRecord, reject: Rejection) -> None:
        source = source_of(record)
        log.debug("rejected record %s: %s", source, reject)
        headers = [
            *(record.headers or ()),
            (ERROR_HEADER, str(reject).encode()),
            (SOURCE_HEADER, source.encode()),
        ]
        try:
            future = self._producer.send(self.topic, record.value, key=record.key, headers=headers)
        except Exception as exc:  # any client error: count it, keep training
            self._failed(source, exc)
            return
        future.add_done_callback(lambda done: self._delivered(source, done))

    def _delivered(self, source: str, done: Future[int]) -> None:
        error = done.exception()
        if error is not None:
            self._failed(source, error)

    def _failed(self, source: str, exc: BaseException) -> None:
        self._errors.inc()
        log.error("could not write rejected record %s to %s: %s", source, self.topic, exc)

    def flush(self, timeout: float = 30.0) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except Exception as exc:
            log.error("dead-letter flush to %s failed: %s", self.topic, exc)

    def close(self) -> None:
        try:
            self._producer.close(timeout=10)
        except Exception as exc:
            log.error("closing the dead-letter producer failed: %s", exc)
