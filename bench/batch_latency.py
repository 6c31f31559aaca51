"""What deterministic batching costs a live stream: produce -> batch latency, merge on vs off.

Run: ``.venv/bin/python bench/batch_latency.py [--rate 2000] [--seconds 6]``

A producer thread writes binary samples at a steady rate, each stamped with its production
time and spread round-robin over the partitions. A ``KafkaSampleSource`` (confluent client,
``max_batch_size=256``, ``max_wait_ms=50``, as the trainer's defaults) reads them from the
newest offset; every sample's latency is the time its batch is handed out minus its stamp.
For 1 and 3 partitions the source runs with ``deterministic_batches`` on and off, alternating
twice over the same live stream, in this one process, and prints p50 / p99 per setting.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from streamtrain import metrics
from streamtrain.broker import EmbeddedBroker
from streamtrain.client import SampleProducer
from streamtrain.ingest.options import SourceOptions
from streamtrain.ingest.source import KafkaSampleSource
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import SampleSpec

SPEC = SampleSpec(feature_shape=(16,), task="binary")


class SteadyProducer:
    """Sends ``rate`` samples/s in 5 ms ticks until stopped, spread over ``partitions``."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: float) -> None:
        self._producer = SampleProducer(
            spec=SPEC,
            topic=topic,
            format="binary",
            kafka=KafkaConnection(bootstrap),
            linger_ms=0,
        )
        self._partitions, self._rate = partitions, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyProducer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._producer.close()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        tick, sent, started = 0.005, 0, time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self._rate) - sent
            for _ in range(due):
                x = rng.uniform(-1, 1, 16).astype(np.float32)
                self._producer.send(
                    x, int(x.sum() > 0), timestamp=time.time(), partition=sent % self._partitions
                )
                sent += 1
            self._producer.flush()
            self._stop.wait(tick)


def measure(bootstrap: str, topic: str, deterministic: bool, seconds: float) -> np.ndarray:
    """Latencies (seconds) of every sample batched during ``seconds``, after a 1 s warm-up."""
    latencies: list[np.ndarray] = []
    with KafkaSampleSource(
        spec=SPEC,
        topic=topic,
        group_id=f"{topic}-{deterministic}",
        kafka=KafkaConnection(bootstrap, client="confluent"),
        options=SourceOptions(
            start_from="latest",
            max_batch_size=256,
            max_wait_ms=50,
            deterministic_batches=deterministic,
        ),
    ) as source:
        warm_until = time.monotonic() + 1.0
        end = warm_until + seconds
        while time.monotonic() < end:
            batch = source.next_batch()
            now = time.time()
            if batch.size and time.monotonic() >= warm_until:
                latencies.append(now - batch.timestamps)
    return np.concatenate(latencies) if latencies else np.zeros(0)


def _waits_expired() -> float:
    return sum(
        float(sample.value)
        for family in metrics.INGEST_PARTITION_WAITS_EXPIRED.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    print(
        f"{'partitions':>10} {'merge':>5} {'samples':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'waits expired':>13}"
    )
    with EmbeddedBroker() as broker:
        for partitions in (1, 3):
            topic = f"latency-{partitions}"
            broker.create_topics([topic], partitions=partitions)
            pooled: dict[bool, list[np.ndarray]] = {True: [], False: []}
            expired = {True: 0.0, False: 0.0}
            with SteadyProducer(broker.bootstrap_servers, topic, partitions, args.rate):
                for deterministic in (True, False, True, False):
                    before = _waits_expired()
                    pooled[deterministic].append(
                        measure(broker.bootstrap_servers, topic, deterministic, args.seconds / 2)
                    )
                    expired[deterministic] += _waits_expired() - before
            for deterministic in (True, False):
                ms = np.concatenate(pooled[deterministic]) * 1000
                p50, p99 = np.percentile(ms, [50, 99])
                flag = "on" if deterministic else "off"
                print(
                    f"{partitions:>10} {flag:>5} {len(ms):>8} {p50:>7.1f} {p99:>7.1f} "
                    f"{expired[deterministic]:>13.0f}"
                )


if __name__ == "__main__":
    main()
