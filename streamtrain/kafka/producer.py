"""A producer behind one small Protocol, over kafka-python or confluent-kafka.

``send`` returns a :class:`concurrent.futures.Future` resolving to the record's offset (or
to the delivery error), the same for both libraries, so writers need not know which one runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from streamtrain.kafka.errors import KafkaUnreachable
from streamtrain.kafka.reachability import REACHABILITY

Headers = Sequence[tuple[str, bytes]]
Delivery = Callable[[BaseException | None], None]


class ProduceTimeout(TimeoutError):
    """Records were still unacknowledged when a flush's timeout ran out."""


class RecordProducer(Protocol):
    """Sends records; ``flush`` returns once every record sent so far is acknowledged."""

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> Future[int]: ...
    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        on_delivery: Delivery,
    ) -> None:
        """Queue a record; ``on_delivery(None)`` once acknowledged, ``on_delivery(error)``
        once it failed. No future per record: for hot paths sending many small records (a
        few µs each instead of ``send``'s ~25 µs); the caller serves callbacks with ``poll``."""
        ...

    def flush(self, timeout: float) -> None: ...
    def poll(self, timeout: float) -> None:
        """Run the delivery callbacks that are due, waiting at most ``timeout`` for one."""
        ...

    def close(self, timeout: float) -> None: ...


class KafkaPythonProducer:
    """:class:`RecordProducer` over ``kafka.KafkaProducer`` (``options``: its keywords)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer = KafkaProducer(**dict(options))
        except KafkaTimeoutError:
            timeout_s = options.get("bootstrap_timeout_ms", 30_000) / 1000
            raise KafkaUnreachable(REACHABILITY.servers, "bootstrapping", timeout_s) from None

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> Future[int]:
        done: Future[int] = Future()
        sent = self._producer.send(
            topic, value=value, key=key, headers=list(headers), partition=partition
        )
        sent.add_callback(lambda metadata: _acknowledged(done, int(metadata.offset)))
        sent.add_errback(done.set_exception)
        return done

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        on_delivery: Delivery,
    ) -> None:
        sent = self._producer.send(topic, value=value, key=key, headers=list(headers))
        sent.add_callback(lambda metadata: _delivered(on_delivery))
        sent.add_errback(on_delivery)

    def flush(self, timeout: float) -> None:
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError as exc:
            raise ProduceTimeout(f"records not acknowledged within {timeout:.0f} s") from exc

    def poll(self, timeout: float) -> None:
        return None  # kafka-python runs callbacks on its own I/O thread

    def close(self, timeout: float) -> None:
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer.close(timeout=timeout)
        except KafkaTimeoutError:
            # kafka-python 3 flushes inside close() and raises when records are still
            # unacknowledged, before it stops its I/O thread and marks itself closed; its
            # __del__ then tries again and prints a traceback at exit. Records not sent by
            # now are given up (the caller's flush reported them), as close() itself would
            # once past its flush: stop the I/O thread without sending, and mark it closed.
            producer: Any = self._producer
            producer._sender.force_close()
            producer._closed = True


class ConfluentProducer:
    """:class:`RecordProducer` over ``confluent_kafka.Producer`` (``config``: librdkafka's).

    librdkafka runs delivery callbacks only inside ``poll``/``flush``: each ``send`` serves
    those due (a caller of ``produce`` calls ``poll``), and a full local queue is drained
    (``poll``) before retrying, never dropped.
    """

    def __init__(self, config: Mapping[str, Any], queue_wait_s: float = 60.0) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(dict(config))
        self._queue_wait_s = queue_wait_s

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> Future[int]:
        done: Future[int] = Future()

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                done.set_exception(RuntimeError(f"delivery to {topic} failed: {error.str()}"))
            else:
                _acknowledged(done, int(message.offset()))

        # Serve due delivery callbacks first: after produce() nothing may run but the return,
        # so an interrupt (Ctrl-C in `streamtrain produce`) cannot land between a record being
        # queued and the caller counting it.
        self._producer.poll(0)
        # librdkafka's "no partition given": its partitioner picks one.
        self._queue(topic, value, key, -1 if partition is None else partition, delivered, headers)
        return done

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        on_delivery: Delivery,
    ) -> None:
        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                on_delivery(RuntimeError(f"delivery to {topic} failed: {error.str()}"))
            else:
                _delivered(on_delivery)

        self._queue(topic, value, key, -1, delivered, headers)

    def _queue(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        delivered: Callable[[Any, Any], None],
        headers: Headers,
    ) -> None:
        """``produce()``; a full local queue is drained (``poll``) and retried, never dropped."""
        deadline = time.monotonic() + self._queue_wait_s
        while True:
            try:
                self._producer.produce(
                    topic, value, key, partition, on_delivery=delivered, headers=list(headers)
                )
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise ProduceTimeout(
                        f"the local queue to {topic} stayed full for {self._queue_wait_s:.0f} s"
                    ) from None
                self._producer.poll(0.05)

    def flush(self, timeout: float) -> None:
        left = self._producer.flush(timeout)
        if left:
            raise ProduceTimeout(f"{left} records not acknowledged within {timeout:.0f} s")

    def poll(self, timeout: float) -> None:
        self._producer.poll(timeout)

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)


def _acknowledged(done: Future[int], offset: int) -> None:
    REACHABILITY.success()
    done.set_result(offset)


def _delivered(on_delivery: Delivery) -> None:
    REACHABILITY.success()
    on_delivery(None)
