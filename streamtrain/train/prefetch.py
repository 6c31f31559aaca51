"""Decode and fetch the next micro-batches on a background thread while the device steps.

The Kafka consumer is not thread-safe, so the prefetch thread owns it completely: offset
commits requested by the training thread are handed over and run between two polls.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Protocol

from streamtrain.sample.batch import Batch
from streamtrain.sample.record_mark import RecordMark

log = logging.getLogger(__name__)


class SampleSource(Protocol):
    """A source of micro-batches with a position that can be saved, sought and committed."""

    def next_batch(self) -> Batch: ...

    def seek(self, offsets: Mapping[int, int]) -> None: ...

    def resume(
        self,
        offsets: Mapping[int, int],
        marks: Mapping[int, RecordMark],
        stored_topic_id: str | None = None,
    ) -> None: ...

    @property
    def topic_id(self) -> str | None: ...

    def positions(self) -> dict[int, int]: ...

    def commit(self, offsets: Mapping[int, int]) -> None: ...

    def close(self) -> None: ...


class SourceFailed(RuntimeError):
    """The prefetch thread stopped on an error; the original is the ``__cause__``."""


class PrefetchingSource:
    """Runs ``source.next_batch()`` ahead of the consumer into a bounded queue.

    Order of operations on the prefetch thread, per iteration:
      1. run the newest pending commit, if any (older pending commits are superseded);
      2. fetch one batch; 3. block until the queue has room (bounded memory), or stop.

    A batch taken with ``get`` is the training thread's; the position it brings the stream to
    is ``batch.next_offsets``, so the trainer never asks the consumer for positions mid-run.
    """

    def __init__(self, source: SampleSource, depth: int = 4) -> None:
        self._source = source
        self._queue: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._commit_lock = threading.Lock()
        self._pending_commit: dict[int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="streamtrain-prefetch", daemon=True)
        self._started = False

    def start(self) -> PrefetchingSource:
        self._started = True
        self._thread.start()
        return self

    def get(self, timeout: float) -> Batch | None:
        """The next batch, or None if none arrived within ``timeout`` seconds."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise SourceFailed(f"sample source failed: {item}") from item
        return item

    def request_commit(self, offsets: Mapping[int, int]) -> None:
        with self._commit_lock:
            self._pending_commit = dict(offsets)

    def _take_commit(self) -> dict[int, int] | None:
        with self._commit_lock:
            pending, self._pending_commit = self._pending_commit, None
        return pending

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                pending = self._take_commit()
                if pending:
                    self._source.commit(pending)
                batch = self._source.next_batch()
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.05)
                        break
                    except queue.Full:
                        continue
            pending = self._take_commit()
            if pending:
                self._source.commit(pending)
        except BaseException as exc:  # handed to the training thread, which decides
            log.exception("prefetch thread failed")
            self._queue.put(exc)

    def close(self, timeout: float = 10.0) -> None:
        """Stop prefetching, run the last requested commit, and close the source."""
        self._stop.set()
        if self._started:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("prefetch thread did not stop within %.0f s", timeout)
                return
        self._source.close()

    def __enter__(self) -> PrefetchingSource:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
