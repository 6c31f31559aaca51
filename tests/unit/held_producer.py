"""A RecordProducer double for the prediction log's unit tests: records wait until the test
acknowledges or fails them (the broker tests are in tests/integration)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from streamtrain.kafka.producer import Delivery, Headers


class HeldProducer:
    """A RecordProducer whose records wait until the test acknowledges or fails them."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes, Delivery]] = []
        self.headers: list[Headers] = []
        self.closed = False
        self._pending: list[Delivery] = []
        self._lock = threading.Lock()

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> Future[int]:
        raise AssertionError("the prediction log sends with produce()")

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        on_delivery: Delivery,
    ) -> None:
        with self._lock:
            self.sent.append((key, value, on_delivery))
            self.headers.append(headers)
            self._pending.append(on_delivery)

    def _take(self) -> list[Delivery]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def acknowledge(self) -> None:
        for on_delivery in self._take():
            on_delivery(None)

    def fail(self) -> None:
        for on_delivery in self._take():
            on_delivery(RuntimeError("broker said no"))

    def flush(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))

    def poll(self, timeout: float) -> None:
        return None

    def close(self, timeout: float) -> None:
        self.closed = True


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
