"""Ingest throughput: KafkaSampleSource (JSON and binary) against each client's raw rate.

Starts its own embedded broker, writes the same samples (16 float features, binary class) to two
topics, one per encoding, then for each topic and each client (kafka-python, confluent-kafka)
times two raw readers with no decoding: the bare bulk poll loop (kafka-python
``poll(max_records=...)``, confluent ``consume(num_messages=...)``) that touches nothing, and
the fair one, which is what any consumer that uses the records must do at least: it reads
every value and the partition and offset it would commit, and holds the cyclic GC off during
each poll as the source does (without that, the collections the poll's objects trigger are
about half of the bare loop's CPU); then ``KafkaSampleSource(client=...).next_batch()``
until every sample has arrived, with its default log-order batches and with
``deterministic_batches=False`` (batches in arrival order). Prints samples/s and the ratio
source / raw per client and encoding, all from one run.

Also times decoding alone, in process and without Kafka (a bare ``json.loads`` per JSON
value, our typed ``decode_json`` and ``decode_binary`` over the same values), and the cost
per record of each Python step the confluent source adds to a raw ``consume``, timed on
freshly consumed messages, to show where the gap goes; and, from those steps, the floor: the
passes a binary record needs beyond the fair raw loop's, and the CPU ratio a source doing
nothing else would reach.

    python bench/ingest.py --count 200000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from typing import NamedTuple, cast

import numpy as np
from confluent_kafka import Consumer, Message
from confluent_kafka import TopicPartition as ConfluentPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamtrain.broker import EmbeddedBroker
from streamtrain.gc_pause import gc_paused
from streamtrain.ingest import KafkaSampleSource, SourceOptions
from streamtrain.ingest.decode import Codec, decode_records
from streamtrain.ingest.decode_pool import DecodePool
from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.kafka.confluent_records import MessageRecords
from streamtrain.kafka.records import KafkaRecord, RecordColumns
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import (
    BINARY_CONTENT_TYPE,
    decode_binary,
    decode_json,
    encode_binary_many,
    encode_json,
)

SPEC = SampleSpec(feature_shape=(16,), task="binary")


class Rate(NamedTuple):
    """Records per second of wall time, and per second of this process's CPU time (all its
    threads, librdkafka's included; the broker is another process). On a shared machine the
    CPU rate is the steadier one: waiting for a core does not count."""

    wall: float
    cpu: float

    def best(self, other: Rate) -> Rate:
        return Rate(max(self.wall, other.wall), max(self.cpu, other.cpu))


class Clock:
    """Wall and process CPU time since it was made."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), _cpu()

    def rate(self, count: int) -> Rate:
        wall, cpu = time.perf_counter() - self._wall, _cpu() - self._cpu
        return Rate(count / wall, count / cpu)


def _cpu() -> float:
    """This process's CPU time plus its exited and running children's (decode workers)."""
    times, running = os.times(), 0.0
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                running += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:  # not Linux, or a child that exited meanwhile (counted once waited for)
        pass
    return time.process_time() + times.children_user + times.children_system + running


def produce(bootstrap: str, topic: str, values: list[bytes], content_type: str) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1
    )
    headers = [("content-type", content_type.encode())]
    for value in values:
        producer.send(topic, value, headers=headers)
    producer.flush()
    producer.close()


def raw_poll(bootstrap: str, topic: str, partitions: int, count: int, fair: bool) -> Rate:
    """kafka-python's bare poll loop, or the fair one (see the module doc)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
    )
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    seen = 0
    clock = Clock()
    while seen < count:
        with gc_paused() if fair else nullcontext():
            for records in consumer.poll(timeout_ms=100, max_records=100_000).values():
                seen += len(records)
                if fair:
                    _ = [r.value for r in records], [(r.partition, r.offset) for r in records]
    rate = clock.rate(count)
    consumer.close()
    return rate


def raw_consume(bootstrap: str, topic: str, partitions: int, count: int, fair: bool) -> Rate:
    """confluent's bare ``consume`` loop, or the fair one (see the module doc)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-raw-{topic}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([ConfluentPartition(topic, p, 0) for p in range(partitions)])
    seen = 0
    clock = Clock()
    while seen < count:
        with gc_paused() if fair else nullcontext():
            # Never more than is left: a consume asked for more than the topic still holds
            # waits out its whole timeout after the last record (0.1 s of a ~0.4 s run).
            messages = consumer.consume(num_messages=min(100_000, count - seen), timeout=0.1)
            n = len(messages)
            if fair:
                _ = (
                    list(map(Message.value, messages)),
                    np.fromiter(map(Message.partition, messages), np.int64, n),
                    np.fromiter(map(Message.offset, messages), np.int64, n),
                )
        seen += n
    rate = clock.rate(count)
    consumer.close()
    return rate


class Variant(NamedTuple):
    """How the source is configured for one row: ``ingest.codec`` and
    ``ingest.decode_workers``."""

    codec: Codec
    workers: int


def source_rate(
    bootstrap: str, topic: str, count: int, client: str, log_order: bool, variant: Variant
) -> Rate:
    """Samples per second through ``KafkaSampleSource``; ``log_order`` is its
    ``deterministic_batches`` (the default): batches merged in log order across partitions.
    Process CPU time includes the decode workers' (children's) time."""
    with KafkaSampleSource(
        spec=SPEC,
        topic=topic,
        group_id=f"bench-{topic}",
        kafka=KafkaConnection(bootstrap, client=client),  # type: ignore[arg-type]
        options=SourceOptions(
            start_from="earliest",
            max_batch_size=100_000,
            max_wait_ms=50,
            deterministic_batches=log_order,
            codec=variant.codec,
            decode_workers=variant.workers,
        ),
    ) as source:
        samples = 0
        clock = Clock()
        while samples < count:
            samples += source.next_batch().size
        return clock.rate(count)


READERS: list[tuple[str, Callable[[str, str, int, int, bool], Rate]]] = [
    ("kafka-python", raw_poll),
    ("confluent", raw_consume),
]


def best_rate(run: Callable[[], object], count: int, repeats: int) -> float:
    """Records per second of the fastest of ``repeats`` calls of ``run`` over ``count``."""
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = max(best, count / (time.perf_counter() - started))
    return best


class _Columns:
    """Records whose columns are already built: times ``decode_records`` alone."""

    def __init__(self, columns: RecordColumns) -> None:
        self._columns = columns

    def __len__(self) -> int:
        return len(self._columns.values)

    def __getitem__(self, index: int) -> KafkaRecord:
        raise IndexError(index)  # only rejected records are indexed; there are none

    def columns(self, content_types: bool = True) -> RecordColumns:
        return self._columns


def consume_all(bootstrap: str, topic: str, partitions: int, count: int) -> list[Message]:
    """Every record of ``topic`` as the confluent ``Message`` objects a raw consume returns."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-steps-{topic}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([ConfluentPartition(topic, p, 0) for p in range(partitions)])
    messages: list[Message] = []
    while len(messages) < count:
        messages += consumer.consume(num_messages=100_000, timeout=0.1)
    consumer.close()
    return messages


def confluent_steps(
    bootstrap: str, topic: str, partitions: int, count: int, repeats: int
) -> dict[str, float]:
    """Microseconds per record of each Python step the source adds to a raw ``consume``:
    where the gap between the two rates goes. Each step is timed once per repeat (best kept)
    on freshly consumed messages: a message builds its header list on the first
    ``headers()`` call and keeps it, so a second call would time a cache."""

    def poll_passes(messages: list[Message]) -> object:
        n = len(messages)
        return (
            any(map(Message.error, messages)),
            np.fromiter(map(Message.partition, messages), np.int64, n),
            np.fromiter(map(Message.offset, messages), np.int64, n),
        )

    def records(messages: list[Message]) -> MessageRecords:
        n = len(messages)
        return MessageRecords(topic, messages, np.zeros(n, np.int64), np.arange(n))

    def columns(messages: list[Message]) -> object:
        return records(messages).columns()

    def declared_columns(messages: list[Message]) -> object:
        return records(messages).columns(False)

    def accessor(read: Callable[[Message], object]) -> Callable[[list[Message]], object]:
        return lambda messages: list(map(read, messages))

    def decode(messages: list[Message], codec: Codec) -> Callable[[], object]:
        built = cast(Sequence[KafkaRecord], _Columns(cast(RecordColumns, columns(messages))))
        return lambda: decode_records(SPEC, built, 1 << 20, codec)

    def values(read: Callable[[list[bytes]], object]) -> Callable[[list[Message]], object]:
        return lambda messages: read(list(map(Message.value, messages)))

    def sizes(values: list[bytes]) -> object:
        return np.fromiter(map(len, values), np.int64, len(values))

    steps: dict[str, Callable[[list[Message]], object]] = {
        "poll's error/partition/offset passes": poll_passes,
        "  of which the error pass": lambda messages: any(map(Message.error, messages)),
        "columns(): all": columns,
        "columns(False): declared codec": declared_columns,
        "  of which Message.headers() lists": accessor(Message.headers),
        "  of which Message.timestamp() tuples": accessor(Message.timestamp),
        "  of which Message.value()": accessor(Message.value),
        "  of which Message.key()": accessor(Message.key),
        # With the timestamps and the error pass, what the source must do per binary record
        # beyond the fair raw loop whatever else it does (the floor, see main()).
        "value() list, then their sizes": values(sizes),
        "value() list, then their join": values(b"".join),
    }
    costs = {}
    for name, step in steps.items():
        best = math.inf
        for _ in range(repeats):
            messages = consume_all(bootstrap, topic, partitions, count)
            with gc_paused():  # as the source's next_batch runs them
                started = time.perf_counter()
                step(messages)
                best = min(best, time.perf_counter() - started)
        costs[name] = best / count * 1e6
    messages = consume_all(bootstrap, topic, partitions, count)
    for label, codec in (("auto", "auto"), ("declared", topic.removeprefix("bench-"))):
        run = decode(messages, cast(Codec, codec))
        costs[f"decode_records, codec {label}"] = 1e6 / best_rate(run, count, repeats)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="Runs per reader; best is kept.")
    parser.add_argument(
        "--clients",
        nargs="+",
        choices=[c for c, _ in READERS],
        default=[c for c, _ in READERS],
        help="Clients to measure (the confluent path's steps are always timed).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[2],
        help="ingest.decode_workers values for extra JSON/confluent rows (1 is always run).",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.count, 16)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64)
    binary_values = encode_binary_many(SPEC, features, labels)
    json_values = [
        encode_json(f, lab) for f, lab in zip(features.tolist(), labels.tolist(), strict=True)
    ]
    stamps = np.zeros(args.count)
    decoders: dict[str, Callable[[], object]] = {
        "bare json.loads per JSON value": lambda: [json.loads(v) for v in json_values],
        "decode_json (typed msgspec) over the JSON values": lambda: decode_json(
            SPEC, json_values, stamps
        ),
        "decode_binary over the binary values": lambda: decode_binary(SPEC, binary_values, stamps),
    }
    pools = {w: DecodePool(SPEC, w) for w in args.workers if w > 1}
    for w, pool in pools.items():
        pool.start()
        decoders[f"DecodePool({w}) over the JSON values"] = partial(pool, SPEC, json_values, stamps)
    decode_rates = {
        name: best_rate(run, args.count, args.repeats) for name, run in decoders.items()
    }
    for pool in pools.values():
        pool.close()

    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        create_topics(bootstrap, ["bench-json", "bench-binary"], args.partitions)
        produce(bootstrap, "bench-json", json_values, "application/json")
        produce(bootstrap, "bench-binary", binary_values, BINARY_CONTENT_TYPE)
        rows = []
        steps: dict[str, dict[str, float]] = {}
        readers = [(c, r) for c, r in READERS if c in args.clients]
        for name, topic, size in (
            ("binary", "bench-binary", len(binary_values[0])),
            ("json", "bench-json", int(np.mean([len(v) for v in json_values[:1000]]))),
        ):
            declared = cast(Codec, name)
            for client, raw_reader in readers:
                variants = [Variant("auto", 1), Variant(declared, 1)]
                if name == "json" and client == "confluent":
                    variants += [Variant(declared, w) for w in args.workers]
                # Alternate the readers and keep the best of each: on a shared machine a
                # single run mostly measures the neighbours.
                bare = raw = Rate(0.0, 0.0)
                ours = {v: Rate(0.0, 0.0) for v in variants}
                arrival = dict(ours)
                for _ in range(args.repeats):
                    where = (bootstrap, topic, args.partitions, args.count)
                    bare = bare.best(raw_reader(*where, False))
                    raw = raw.best(raw_reader(*where, True))
                    for v in variants:
                        run = source_rate(bootstrap, topic, args.count, client, True, v)
                        ours[v] = ours[v].best(run)
                        run = source_rate(bootstrap, topic, args.count, client, False, v)
                        arrival[v] = arrival[v].best(run)
                for v in variants:
                    rows.append((name, size, client, v, bare, raw, ours[v], arrival[v]))
            steps[name] = confluent_steps(
                bootstrap, topic, args.partitions, args.count, args.repeats
            )

    print(f"{args.count} samples, 16 float32 features, {args.partitions} partitions, loopback")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("source: default (batches in log order); arrival: deterministic_batches=False")
    print("codec: ingest.codec (auto: by content-type header); workers: ingest.decode_workers")
    print("bare: the bare poll loop; raw: the fair one (values, partitions, offsets read, GC off)")
    print("ratios to the fair raw poll by wall time, and [by process CPU time, workers' included];")
    print("/bare: source's wall ratio to the bare loop")
    print(
        f"{'encoding':<9}{'bytes':>6} {'client':<13}{'codec':<7}{'workers':>8}{'bare/s':>10}"
        f"{'raw/s':>10}{'source/s':>10}{'source/raw':>11}{'[cpu]':>7}{'/bare':>6}"
        f"{'arrival/s':>10}{'arrival/raw':>12}{'[cpu]':>7}{'/bare':>6}"
    )
    for name, size, client, v, bare, raw, src, late in rows:
        print(
            f"{name:<9}{size:>6} {client:<13}{v.codec:<7}{v.workers:>8}{bare.wall:>10,.0f}"
            f"{raw.wall:>10,.0f}{src.wall:>10,.0f}{src.wall / raw.wall:>11.2f}"
            f"{src.cpu / raw.cpu:>7.2f}{src.wall / bare.wall:>6.2f}{late.wall:>10,.0f}"
            f"{late.wall / raw.wall:>12.2f}{late.cpu / raw.cpu:>7.2f}{late.wall / bare.wall:>6.2f}"
        )
    print("decoding alone, in process, same values:")
    for name, rate in decode_rates.items():
        print(f"  {name}: {rate:,.0f}/s")
    raw_us = {row[0]: 1e6 / row[5].wall for row in rows if row[2] == "confluent"}
    print("confluent path, microseconds per record (steps timed on consumed messages):")
    print(f"  {'step':<40}{'binary':>8}{'json':>8}")
    print(
        f"  {'fair raw consume (1 / raw rate above)':<40}{raw_us['binary']:>8.2f}"
        f"{raw_us['json']:>8.2f}"
    )
    for step in steps["binary"]:
        print(f"  {step:<40}{steps['binary'][step]:>8.2f}{steps['json'][step]:>8.2f}")
    _print_ceiling(rows, steps["binary"])


# The passes over a poll's Messages that a binary record needs beyond the fair raw loop's
# (values, partitions, offsets): error check, timestamp, key (a record mark digests it once
# the messages are freed, MessageRecords.settle), size check and the join for ``frombuffer``.
# The values list is the raw loop's, so it is taken off the last two.
_FLOOR = (
    "  of which the error pass",
    "  of which Message.timestamp() tuples",
    "  of which Message.key()",
    "value() list, then their sizes",
    "value() list, then their join",
)


def _print_ceiling(rows: list[tuple[object, ...]], binary: dict[str, float]) -> None:
    """The best source / raw CPU ratio a confluent-kafka source can reach for binary records
    when every step but the floor's passes cost nothing."""
    value = binary["  of which Message.value()"]
    floor = sum(binary[name] for name in _FLOOR) - 2 * value
    for name, _size, client, _v, _bare, raw, *_ in rows:
        if name == "binary" and client == "confluent":
            raw_us = 1e6 / cast(Rate, raw).cpu
            best = raw_us / (raw_us + floor)
            print(
                f"floor beyond the fair raw loop, binary: {floor:.2f} us/record; fair raw "
                f"{raw_us:.2f} us CPU/record; best reachable CPU ratio {best:.2f}"
            )
            return


if __name__ == "__main__":
    main()
