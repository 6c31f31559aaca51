"""The demo's application with delayed labels: it asks the server, and learns the truth later.

This is what ``docs/labels.md`` describes, run as a process of ``streamtrain demo --labels
delayed``. Each pass of its loop, in this order:

1. until the server answers a prediction (a model needs a first snapshot, and a snapshot
   needs a trained step), the stream's samples go to the samples topic with their labels, as
   a batch backfill would: the *bootstrap*, counted apart; it ends for good once a request is
   answered;
2. the rows due at the rate are sent as batched Open Inference Protocol requests, each with
   its own request ``id``; the server logs every served row to the prediction-log topic under
   the row's id (``<id>/<row>``, or the id itself for a request of one row);
3. each row's true label is scheduled for a random delay later (the outcome "happens"), and
   every label whose time has come is sent to the labels topic keyed by that row id;
4. about once a second, a status file: what was sent, what is still pending, and how often the
   served answers were right (judged when their labels arrive, so the model's improvement is
   seen from the application's side).

SIGTERM stops the loop; labels still pending are not sent (their predictions then expire in
the join, as unanswered impressions do).
"""

from __future__ import annotations

import argparse
import heapq
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from streamtrain.broker import PRODUCER_LINGER_MS
from streamtrain.client import LabelProducer, SampleProducer
from streamtrain.datasets import SampleChunk
from streamtrain.demo.app_status import ACCURACY_WINDOW, AppStatus
from streamtrain.demo.drift import demo_dataset
from streamtrain.kafka import KafkaConnection

BATCHES_PER_SECOND = 20
MAX_BATCH_ROWS = 64
STATUS_EVERY_SECONDS = 1.0


def row_id(request_id: str, row: int, rows: int) -> str:
    """The id the server logs a row under, and the key its label goes with: the request id
    for a request of one row, ``<id>/<row>`` for each row of a larger one (docs/labels.md).

    >>> row_id("demo-7", 0, 1), row_id("demo-7", 3, 20)
    ('demo-7', 'demo-7/3')
    """
    return request_id if rows == 1 else f"{request_id}/{row}"


@dataclass(order=True)
class _Due:
    at: float
    row_id: str = field(compare=False)
    label: int = field(compare=False)
    predicted: int = field(compare=False)


class LabelSchedule:
    """Labels waiting for their outcome to "happen", soonest first.

    >>> schedule = LabelSchedule()
    >>> schedule.add(2.0, "r/0", label=1, predicted=1)
    >>> schedule.add(1.0, "r/1", label=0, predicted=1)
    >>> [d.row_id for d in schedule.due(1.5)], len(schedule)
    (['r/1'], 1)
    """

    def __init__(self) -> None:
        self._heap: list[_Due] = []

    def add(self, at: float, row_id: str, label: int, predicted: int) -> None:
        heapq.heappush(self._heap, _Due(at, row_id, label, predicted))

    def due(self, now: float) -> list[_Due]:
        out = []
        while self._heap and self._heap[0].at <= now:
            out.append(heapq.heappop(self._heap))
        return out

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(frozen=True)
class AppOptions:
    infer_url: str
    bootstrap_servers: str
    dataset: str
    rate: float
    samples_topic: str
    labels_topic: str
    status_path: Path
    delay_min: float = 0.5
    delay_max: float = 3.0
    seed: int = 0


def infer_request(request_id: str, rows: npt.NDArray[np.float32]) -> dict[str, Any]:
    """One OIP request for ``rows`` (``[n, *feature_shape]``) under ``request_id``."""
    return {
        "id": request_id,
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.reshape(-1).tolist(),
            }
        ],
    }


def predicted_classes(doc: dict[str, Any], rows: int) -> list[int]:
    """The ``predicted_class`` output of an OIP response, one per row."""
    for output in doc.get("outputs", []):
        if isinstance(output, dict) and output.get("name") == "predicted_class":
            data = output.get("data")
            if isinstance(data, list) and len(data) == rows:
                return [int(v) for v in data]
    raise ValueError(f"response has no predicted_class with {rows} values")


def _rows(chunks: Iterator[SampleChunk]) -> Iterator[tuple[npt.NDArray[np.float32], int]]:
    for chunk in chunks:
        labels = np.asarray(chunk.labels)
        for i in range(len(chunk)):
            yield chunk.features[i], int(labels[i])


class DelayedLabelApp:
    """Steps 1 to 4 of the module docstring."""

    def __init__(self, options: AppOptions, stop: threading.Event) -> None:
        self.options = options
        self.stop = stop
        info, _ = demo_dataset(options.dataset, options.rate)
        self.info = info
        self.stream = _rows(info.iterate(10**12, seed=options.seed, chunk_size=4096))
        self.random = random.Random(options.seed)
        self.http = httpx.Client(timeout=5.0)
        kafka = KafkaConnection(options.bootstrap_servers)
        # Fewer, larger batches against the embedded broker (streamtrain.broker).
        self.samples = SampleProducer(
            spec=info.spec,
            topic=options.samples_topic,
            kafka=kafka,
            format="binary",
            linger_ms=PRODUCER_LINGER_MS,
        )
        self.labels = LabelProducer(
            spec=info.spec, topic=options.labels_topic, kafka=kafka, linger_ms=PRODUCER_LINGER_MS
        )
        self.schedule = LabelSchedule()
        self.status = AppStatus()
        self.judged: deque[bool] = deque(maxlen=ACCURACY_WINDOW)
        self.bootstrapping = True
        self.batch_rows = max(1, min(MAX_BATCH_ROWS, round(options.rate / BATCHES_PER_SECOND)))

    def run(self) -> None:
        start = time.monotonic()
        next_status = start
        sent = 0
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                due = int((now - start) * self.options.rate) - sent
                if due >= self.batch_rows:
                    sent += self._send_rows(self.batch_rows)
                self._send_due_labels()
                if now >= next_status:
                    next_status = now + STATUS_EVERY_SECONDS
                    self._write_status()
                if due < self.batch_rows:
                    self.stop.wait(self.batch_rows / self.options.rate / 2)
        finally:
            self._write_status()
            self.http.close()
            self.samples.close()
            self.labels.close()

    def _send_rows(self, count: int) -> int:
        rows = [next(self.stream) for _ in range(count)]
        features = np.stack([f for f, _ in rows]).astype(np.float32)
        labels = [label for _, label in rows]
        if self._try_predict(features, labels):
            return count
        self.samples.send_many(features, np.asarray(labels, np.int64))  # step 1
        self.status.bootstrap_samples += count
        return count

    def _try_predict(self, features: npt.NDArray[np.float32], labels: list[int]) -> bool:
        """Step 2 and the scheduling of step 3; False while the server has no weights yet."""
        request_id = f"demo-{self.status.requests}"
        try:
            response = self.http.post(
                self.options.infer_url, json=infer_request(request_id, features)
            )
        except httpx.HTTPError as exc:
            if self.bootstrapping:  # the server is still starting: not a failure yet
                return False
            self.status.requests_failed += 1
            self.status.last_error = f"infer request failed: {exc}"
            return True
        if response.status_code == 503 and self.bootstrapping:
            return False
        self.status.requests += 1
        if response.status_code != 200:
            self.status.requests_failed += 1
            self.status.last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            return True
        self.bootstrapping = False
        doc = response.json()
        answered_id = str(doc.get("id", request_id))
        predicted = predicted_classes(doc, len(labels))
        now = time.monotonic()
        for row, (label, guess) in enumerate(zip(labels, predicted, strict=True)):
            delay = self.random.uniform(self.options.delay_min, self.options.delay_max)
            self.schedule.add(now + delay, row_id(answered_id, row, len(labels)), label, guess)
        self.status.rows_served += len(labels)
        return True

    def _send_due_labels(self) -> None:
        """Step 3: every label whose outcome has "happened" by now."""
        for due in self.schedule.due(time.monotonic()):
            self.labels.send(due.row_id, due.label)
            self.judged.append(due.label == due.predicted)
            self.status.labels_sent += 1

    def _write_status(self) -> None:
        self.status.labels_pending = len(self.schedule)
        if self.judged:
            self.status.served_accuracy = sum(self.judged) / len(self.judged)
        self.status.write(self.options.status_path)


def parse_args(argv: Sequence[str] | None = None) -> AppOptions:
    parser = argparse.ArgumentParser(prog="python -m streamtrain.demo.label_app")
    parser.add_argument("--infer-url", required=True)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--dataset", default="hyperplane")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--samples-topic", required=True)
    parser.add_argument("--labels-topic", required=True)
    parser.add_argument("--status-path", type=Path, required=True)
    parser.add_argument("--delay-min", type=float, default=0.5)
    parser.add_argument("--delay-max", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 <= args.delay_min <= args.delay_max:
        parser.error("need 0 <= --delay-min <= --delay-max")
    if args.rate <= 0:
        parser.error("--rate must be > 0")
    return AppOptions(**{k.replace("-", "_"): v for k, v in vars(args).items()})


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    DelayedLabelApp(options, stop).run()


if __name__ == "__main__":
    main()
