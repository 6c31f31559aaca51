"""What grows in the embedded broker as its log grows: fetch, produce and ListOffsets latency.

Starts one embedded broker (Tansu, memory storage), fills one single-partition topic per batch
shape in steps, and after each step measures with plain confluent-kafka clients:

- ``fetch_ms``: a consumer assigned one record before the end, time to receive that record
  (``fetch.wait.max.ms=10``), median of ``--trials``;
- ``produce_ms``: one record produced and flushed (acks=1), median of ``--trials``;
- ``list_offsets_ms``: ``get_watermark_offsets`` (a ListOffsets request), median;
- ``idle_cpu``: the broker's CPU share while one consumer waits at the end of the log for
  ``--idle-seconds`` (what a trainer polling a quiet topic costs it).

Each shape (``--shapes``: records per batch) fills the same number of records, so a cost that
follows batches and one that follows records or bytes tell apart.

    python bench/broker_growth.py --steps 20000,50000,100000,200000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamtrain.broker import EmbeddedBroker

FETCH_WAITS_MS = (10, 250)  # the clients' default here, and the demo's against this broker
VALUE = b"x" * 88  # the binary sample of the demo's 16 features is 88 bytes
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fill(bootstrap: str, topic: str, records: int, per_batch: int) -> None:
    """Append ``records`` records in batches of exactly ``per_batch`` (one flush per batch)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 1000,
            "batch.num.messages": per_batch,
            "acks": 1,
            "enable.idempotence": False,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    done = 0
    while done < records:
        count = min(per_batch, records - done)
        for _ in range(count):
            producer.produce(topic, VALUE, partition=0)
        if per_batch > 1:
            producer.flush()
        else:
            producer.poll(0)
        done += count
    producer.flush()


def median_ms(action: Callable[[], None], trials: int) -> float:
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def fetch_ms(bootstrap: str, topic: str, offset: int, wait_ms: int, cap_s: float) -> float:
    """Milliseconds until a consumer assigned at ``offset`` receives a record (inf: none
    within ``cap_s``)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"growth-{topic}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": wait_ms,
            "fetch.queue.backoff.ms": 10,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, offset)])
        start = time.perf_counter()
        while time.perf_counter() - start < cap_s:
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                return (time.perf_counter() - start) * 1000
        return float("inf")
    finally:
        consumer.close()


def measure(
    bootstrap: str, topic: str, last_batch: int, args: argparse.Namespace, pid: int
) -> dict[str, float]:
    """``last_batch``: base offset of the newest batch (a fetch from inside a batch of the
    embedded broker skips to the next batch, so every fetch starts at a batch's base)."""
    row = {
        f"fetch_{wait}": statistics.median(
            fetch_ms(bootstrap, topic, last_batch, wait, args.cap) for _ in range(args.trials)
        )
        for wait in FETCH_WAITS_MS
    }
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"growth-{topic}"})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": 1})
    tp = TopicPartition(topic, 0)

    def produce_one() -> None:
        producer.produce(topic, VALUE, partition=0)
        producer.flush()

    def list_offsets() -> None:
        consumer.get_watermark_offsets(tp, timeout=10)

    row["list_offsets_ms"] = median_ms(list_offsets, args.trials)
    # Idle at the end: one consumer long-polls a log that no longer grows (wait 10 ms).
    idle = Consumer({"bootstrap.servers": bootstrap, "group.id": "idle", "fetch.wait.max.ms": 10})
    idle.assign([TopicPartition(topic, 0, last_batch + 10**9)])
    before, start = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - start < args.idle_seconds:
        idle.poll(0.1)
    row["idle_cpu"] = (cpu_seconds(pid) - before) / (time.monotonic() - start)
    idle.close()
    consumer.close()
    # Last: these append one-record batches.
    row["produce_ms"] = median_ms(produce_one, args.trials)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="10000,50000,100000,200000")
    parser.add_argument("--shapes", default="1,100", help="records per batch, comma-separated")
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--cap", type=float, default=10.0, help="seconds a fetch may take")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    shapes = {f"{per}/batch": per for per in (int(s) for s in args.shapes.split(","))}
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert pid is not None
        broker.create_topics([f"g{per}" for per in shapes.values()], partitions=1)
        print(
            "| records | batches | shape | fetch ms (wait 10 ms) | fetch ms (wait 250 ms) "
            "| produce ms | ListOffsets ms | broker CPU, 1 idle consumer | broker RSS MB |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        end = dict.fromkeys(shapes.values(), 0)
        batches = dict.fromkeys(shapes.values(), 0)
        for target in steps:
            for label, per in shapes.items():
                topic = f"g{per}"
                count = (target - end[per]) // per * per  # whole batches only
                fill(broker.bootstrap_servers, topic, count, per)
                end[per] += count
                batches[per] += count // per
                row = measure(broker.bootstrap_servers, topic, end[per] - per, args, pid)
                print(
                    f"| {end[per]:,} | {batches[per]:,} | {label} | {row['fetch_10']:.0f} "
                    f"| {row['fetch_250']:.0f} | {row['produce_ms']:.1f} "
                    f"| {row['list_offsets_ms']:.1f} | {row['idle_cpu']:.0%} "
                    f"| {rss_mb(pid):.0f} |",
                    flush=True,
                )
                end[per] += args.trials  # the produce trials appended one record each
                batches[per] += args.trials


if __name__ == "__main__":
    main()
