"""A tailing reader's latency while another reader takes a large base, per fetch bound (issue 26).

Run: ``.venv/bin/python bench/replica_fetch.py --base-mb 1024 --modes 64/64 4/8 64/64 4/8``

The mechanism of ``bench/delta.py``'s freshness spikes while a new replica read its base,
without the trainer: on the embedded broker, partition 0 of one topic holds a base of
``--base-mb`` in 512 KiB records (a snapshot's chunks). A *tail* process follows its end
(``PartitionReader.poll``, 50 ms slices, as the server's subscriber) and this process sends a
small record every 0.1 s carrying its send time: latency = the tail's receive time - the send
time (the broker's acknowledgement time is printed beside). A *replica* process then reads
the whole base once, hashing every record (sha256: the replica verifies each chunk), with the
mode's fetch bounds; so does the tail. A mode ``F/Q`` is ``F`` MiB per round trip (the
request's bound and the partition's) and ``Q`` MiB read ahead at most
(``queued.max.messages.kbytes``); ``64/64`` is what the readers did before (16 MiB partition
bound under a 64 MiB request bound, which the embedded broker answers up to 64 MiB; 64 MiB
librdkafka's default read-ahead), ``4/8`` the readers' bounds now (``snapshot/readers.py``).

Printed per mode: tail latency p50 / p99 / max in the 5 s before the read, during it and 5 s
after; the read's time and MB/s; the broker's and replica's cores and peak RSS; PSI (memory,
cpu) during the read.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import struct
import threading
import time
from typing import Any

from delta_pressure import PressureWatch
from delta_procs import status_bytes
from proc_cpu import process_cpu_s

from streamtrain.broker import EmbeddedBroker
from streamtrain.kafka import KafkaConnection, partition_reader, record_producer
from streamtrain.kafka.read_pace import ReadPace

TOPIC = "replica-fetch"
RECORD = 512 * 1024
MiB = 1024 * 1024


def _reader(
    bootstrap: str,
    mode: tuple[float, float],
    partition: int = 0,
    paced: bool = False,
    wait_ms: int = 10,
) -> Any:
    fetch, queued = mode
    return partition_reader(
        KafkaConnection(bootstrap),
        topic=TOPIC,
        partition=partition,
        fetch_max_wait_ms=wait_ms,
        fetch_bytes=int(fetch * MiB),
        queued_bytes=int(queued * MiB),
        pace=ReadPace if paced else None,
    )


def _burn(stop: Any) -> None:
    """A busy core (``--burn``): the trainer's share of the CPU in bench/delta.py."""
    while not stop.is_set():
        sum(range(100_000))


def tail(
    bootstrap: str,
    mode: tuple[float, float],
    start: int,
    out: Any,
    ready: Any,
    stop: Any,
    wait_ms: int,
) -> None:
    """Follows partition 0 from ``start``: (send time, receive time) of every tick."""
    reader = _reader(bootstrap, mode, wait_ms=wait_ms)
    reader.place(start)
    reader.poll(50)  # connected and fetching
    ready.set()
    got: list[tuple[float, float]] = []
    while not stop.is_set():
        for record in reader.poll(50):
            if len(record.value or b"") == 8:
                got.append((struct.unpack("d", record.value or b"")[0], time.time()))
    reader.close()
    out.put(got)


def replica(
    bootstrap: str, mode: tuple[float, float], end: int, out: Any, partition: int, paced: bool
) -> None:
    """Reads offsets 0..end of ``partition`` once, hashing each record; (start, end) wall
    times, and the pace's (paused s, pauses, lowest wait s) when ``paced``."""
    reader = _reader(bootstrap, mode, partition, paced)
    reader.low()  # connected and assigned before the clock starts
    started = time.time()
    nbytes = 0
    for record in reader.read(0, end, time.monotonic() + 600):
        data = bytes(record.value or b"")
        hashlib.sha256(data).digest()
        nbytes += len(data)
    pace = reader.last_pace
    paced_by = (0.0, 0, 0.0) if pace is None else (pace.paused_s, pace.pauses, pace.lowest_s)
    out.put((started, time.time(), nbytes, status_bytes(os.getpid())[1], paced_by))
    reader.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_mode(
    args: argparse.Namespace, broker: EmbeddedBroker, mode: tuple[float, float], paced: bool
) -> None:
    ctx = mp.get_context("spawn")
    bootstrap = broker.bootstrap_servers
    producer = record_producer(KafkaConnection(bootstrap), acks="all", linger_ms=0)
    base = args.partitions - 1
    probe = _reader(bootstrap, mode)
    _, high = probe.bounds(time.monotonic() + 30)
    probe.close()
    probe = _reader(bootstrap, mode, base)
    _, base_high = probe.bounds(time.monotonic() + 30)
    probe.close()
    burning = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(burning,)) for _ in range(args.burn)]
    for burner in burners:
        burner.start()
    tail_out, ready, stop, replica_out = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue()
    follower = ctx.Process(
        target=tail, args=(bootstrap, mode, high, tail_out, ready, stop, args.tail_wait_ms)
    )
    follower.start()
    if not ready.wait(120):
        raise SystemExit("the tail process did not start in 120 s")
    acks: list[tuple[float, float]] = []
    ticking = threading.Event()

    def tick() -> None:
        while not ticking.is_set():
            sent = time.time()
            future = producer.send(TOPIC, struct.pack("d", sent), partition=0)
            producer.flush(30)
            future.result(0)
            acks.append((sent, time.time()))
            ticking.wait(max(0.0, 0.1 - (time.time() - sent)))

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    pressure = PressureWatch()
    threading.Event().wait(args.settle)  # the tail's steady state before the read
    reader = ctx.Process(
        target=replica, args=(bootstrap, mode, base_high, replica_out, base, paced)
    )
    reader.start()
    assert broker.pid is not None and reader.pid is not None
    cpu0 = {"broker": process_cpu_s(broker.pid), "t": time.time()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            pressure.sample(time.time(), {"broker": broker.pid or 0, "replica": reader.pid or 0})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    read_from, read_to, nbytes, replica_hwm, paced_by = replica_out.get(timeout=900)
    broker_cores = (process_cpu_s(broker.pid) - cpu0["broker"]) / (time.time() - cpu0["t"])
    done.set()
    reader.join(30)
    threading.Event().wait(args.settle)
    ticking.set()
    ticker.join(30)
    stop.set()
    got = tail_out.get(timeout=60)
    follower.join(30)
    burning.set()
    for burner in burners:
        burner.join(30)
    producer.close(10)
    phases = {
        "before": (read_from - args.settle, read_from),
        "during": (read_from, read_to),
        "after": (read_to, read_to + args.settle),
    }
    line = [f"mode {mode[0]:g}/{mode[1]:g}{'p' if paced else ''} MiB:"]
    for name, (a, b) in phases.items():
        lat = [r - s for s, r in got if a <= s < b]
        ack = [r - s for s, r in acks if a <= s < b]
        line.append(
            f"{name} tail p50/p99/max {_pct(lat, 0.5) * 1e3:.0f}/{_pct(lat, 0.99) * 1e3:.0f}/"
            f"{max(lat, default=float('nan')) * 1e3:.0f} ms (ack max "
            f"{max(ack, default=float('nan')) * 1e3:.0f} ms, n={len(lat)})"
        )
    span = read_to - read_from
    window = pressure.window(read_from, read_to)
    print("  ".join(line))
    print(
        f"  read {nbytes / 1e6:.0f} MB in {span:.2f} s ({nbytes / 1e6 / span:.0f} MB/s); "
        f"broker {broker_cores:.2f} cores, peak {status_bytes(broker.pid)[1] / 1e9:.2f} GB; "
        f"replica peak {replica_hwm / 1e9:.2f} GB; paused {paced_by[0]:.2f} s in "
        f"{paced_by[1]} pause(s), lowest wait {(paced_by[2] or 0) * 1e3:.0f} ms; during the read: "
        + ", ".join(f"{k} {v:.2f}" for k, v in window.items() if k != "cpu full %"),
        flush=True,
    )


def fill(broker: EmbeddedBroker, base_mb: float, partition: int) -> None:
    producer = record_producer(
        KafkaConnection(broker.bootstrap_servers), acks="all", max_request_size=2 * MiB
    )
    chunk = bytes(range(256)) * (RECORD // 256)
    futures = [
        producer.send(TOPIC, chunk, partition=partition) for _ in range(int(base_mb * MiB / RECORD))
    ]
    producer.flush(300)  # librdkafka serves the acknowledgements inside flush/poll
    for future in futures:
        future.result(0)
    producer.close(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-mb", type=float, default=1024.0)
    parser.add_argument("--modes", nargs="+", default=["64/64", "4/8", "64/64", "4/8"])
    parser.add_argument("--settle", type=float, default=5.0, help="s before and after the read")
    parser.add_argument(
        "--partitions",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: the base on partition 1, the tail on 0 (the layout streamtrain creates)",
    )
    parser.add_argument("--tail-wait-ms", type=int, default=10, help="the tail's fetch wait")
    parser.add_argument(
        "--burn", type=int, default=0, help="processes keeping a core busy (the trainer's)"
    )
    args = parser.parse_args()
    # F/Q, F/Qp: the replica's read paced (kafka/read_pace.py)
    modes = [
        (m.endswith("p"), tuple(float(x) for x in m.rstrip("p").split("/"))) for m in args.modes
    ]
    with EmbeddedBroker() as broker:
        broker.create_topics([TOPIC], args.partitions)
        started = time.perf_counter()
        fill(broker, args.base_mb, args.partitions - 1)
        print(f"base of {args.base_mb:g} MB written in {time.perf_counter() - started:.1f} s")
        for paced, mode in modes:
            run_mode(args, broker, (mode[0], mode[1]), paced)


if __name__ == "__main__":
    main()
