"""Freshness with delta snapshots vs full snapshots, on the embedded broker, in one run.

Run: ``.venv/bin/python bench/delta.py [--rows 4000000] [--dim 64] [--seconds 30]``

For each mode (``delta``: one base, then deltas; ``full``: every snapshot a base) it trains
an ``nn.EmbeddingBag(sparse=True)`` table of ``rows x dim`` fp32 (plus a small dense layer)
with SGD on batches of Zipf-distributed IDs (log-uniform ranks, s ~ 1) at a fixed sample rate,
publishing a snapshot every ``--snapshot-every`` seconds through ``SnapshotPublisher`` with a
``RowTracker``. Mode ``dynamic`` runs deltas with a dynamic table of the same weight bytes
instead, full from the start so every new ID evicts (``bench/delta_dynamic.py``).
A server runs in a separate process (``SnapshotSubscriber`` -> ``SnapshotWatcher``
-> ``WeightSlot`` with the table shared between its copies) and a probe there runs a forward
pass every 5 ms, recording the ``data_watermark`` of the weights it ran on.

Freshness of a batch = the first probe time whose weights had learned from it (served
watermark >= the batch's production time) minus its production time. Samples are generated
in the trainer process (no samples topic): freshness covers train step + snapshot copy +
publish + Kafka + verify + apply + the next prediction. The embedded broker keeps every record
in memory (no retention): a run holds one base plus the deltas (delta mode) or every full
snapshot (full mode) — size ``--seconds`` and ``--snapshot-every`` to fit in memory.

Every snapshot point's pause is split into CPU, run-queue wait and blocked time
(``pause_trace.py``), and every training step is bracketed the same way as a control: is a
snapshot point's wait for a core its own, or the machine's (``run_queue_control``)?

``--device cuda`` keeps the trainer's table, its steps and the batches on the GPU (snapshot
copies then go device -> pinned host memory on a side stream); the server stays on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import delta_rotation
import sched_slice
from delta_pressure import print_pressure
from delta_procs import ProcessWatch, status_bytes
from embedding_model import build_id_embedding
from pause_trace import PauseTrace, run_queue_control

from streamtrain.broker import EmbeddedBroker
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.unfilled import initial_draws_skipped
from streamtrain.snapshot import wire
from streamtrain.train.hooks import SnapshotRequest
from streamtrain.train.row_tracker import RowTracker
from streamtrain.train.snapshot_copy import SnapshotCopier
from streamtrain.train.weights import take_snapshot

HASH = "b" * 64
SPEC = SampleSpec(feature_shape=(9,), task="regression")  # 1 ID + 8 dense features


def _params(args: argparse.Namespace) -> dict[str, int]:
    return {"rows": args.rows, "dim": args.dim, "id_features": 1}


def _model(args: argparse.Namespace, trainer: bool) -> torch.nn.Module:
    """The hashed table's model, or (mode ``dynamic``) ``delta_dynamic.py``'s; a server's or
    replica's without its initial draws, as ``streamtrain serve`` builds it
    (``serve/weights/unfilled.py``; ``--server-draws`` draws them, as before issue 26's change)."""
    skip = not trainer and not getattr(args, "server_draws", False)
    with initial_draws_skipped() if skip else contextlib.nullcontext():
        if getattr(args, "dynamic", False):
            import delta_dynamic

            return delta_dynamic.build(args.rows, args.dim, SPEC.feature_size - 1, fill=trainer)
        return build_id_embedding(SPEC, _params(args))


def _rss_bytes() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    return status_bytes(os.getpid())


def _trim() -> None:
    """Hand freed heap back to the OS (glibc keeps freed 512 KiB chunk buffers otherwise)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _chunk_reads_sized(args: argparse.Namespace) -> None:
    """``--chunk-fetch-mb`` / ``--chunk-queue-mb``: the subscriber's chunk readers' fetch size
    and read-ahead in this process (the server's and the replica's), to compare with the
    defaults (``snapshot/readers.py``); 64 and 64 read as before issue 26's replica change on
    the embedded broker (it honours only a fetch's request bound, then 64 MiB; 64 MiB is
    librdkafka's default read-ahead)."""
    from streamtrain.snapshot import readers

    if args.chunk_fetch_mb is not None:
        readers._CHUNK_FETCH_BYTES = int(args.chunk_fetch_mb * 1024 * 1024)
    if args.chunk_queue_mb is not None:
        readers._CHUNK_QUEUE_BYTES = int(args.chunk_queue_mb * 1024 * 1024)
    if args.base_read_pace == "on":  # the base partition's reads paced (kafka/read_pace.py)
        from streamtrain.kafka.read_pace import ReadPace

        readers.BASE_READ_PACE = ReadPace


def serve(args: argparse.Namespace, bootstrap: str, topic: str, out: Any, stop: Any) -> None:
    """The server process: watcher + slot + a probe; sends probe records and memory back.
    With ``--server-late-s`` it starts that late, so its catch-up reads a base and the deltas
    published meanwhile: its time (watcher start to first poll) and topic reads reported."""
    if args.server_late_s:
        time.sleep(args.server_late_s)
    from streamtrain.serve.weights.slot import WeightSlot
    from streamtrain.serve.weights.watcher import SnapshotWatcher
    from streamtrain.train.row_tracker import row_sparse_buffers, row_sparse_parameters

    torch.set_num_threads(1)
    _chunk_reads_sized(args)
    # The runtime: the interpreter, torch, numpy and the streamtrain modules the server
    # imports, before any weights exist (the memory bound leaves it out).
    baseline, _ = _rss_bytes()
    model = _model(args, trainer=False)
    shared = frozenset(row_sparse_parameters(model)) | frozenset(row_sparse_buffers(model))
    slot = WeightSlot(model, shared=shared)
    with_model, _ = _rss_bytes()  # + the model (its table once, the dense parts twice)
    applied: list[float] = []
    stages: dict[int, dict[str, float]] = {}  # version -> received / applied wall times
    original = slot.apply_delta
    original_load = slot.load

    def timed_apply(dense: Any, rows: Any, header: Any) -> None:
        started = time.perf_counter()
        original(dense, rows, header)
        applied.append(time.perf_counter() - started)
        stages.setdefault(header.version, {})["applied"] = time.time()

    def timed_load(tensors: Any, header: Any, **k: Any) -> None:
        original_load(tensors, header, **k)
        stages.setdefault(header.version, {})["applied"] = time.time()

    slot.apply_delta = timed_apply  # type: ignore[method-assign]
    slot.load = timed_load  # type: ignore[method-assign]
    source = _subscriber(bootstrap, topic, slot)
    original_poll = source.poll
    tail_gaps: list[tuple[float, float]] = []  # (wall time, seconds since the previous poll)
    last_poll = [time.time()]

    def timed_poll(timeout_s: float) -> Any:
        items = original_poll(timeout_s)
        now = time.time()
        tail_gaps.append((now, now - last_poll[0]))
        last_poll[0] = now
        for item in items:
            manifest = getattr(item, "manifest", None)
            if manifest is not None:
                stages.setdefault(manifest.version, {})["received"] = now
        return items

    source.poll = timed_poll  # type: ignore[method-assign]
    if args.tail_wait_fixed:  # the tail keeps its 10 ms fetch wait (kafka/fetch_wait.py off)
        source._tail_wait.fetch_max_wait_ms = 10**9  # reads as widened: never widens again
    tail_log = _log_tail(source)
    tail_rtt = _tail_rtt(source, bootstrap, topic) if args.tail_stats else []
    reads = _count_reads(source)
    catch_up: dict[str, float] = {}

    def first_poll(timeout_s: float) -> Any:
        if not catch_up:  # the catch-up is over: the watcher's first poll
            catch_up.update({"s": time.perf_counter() - started, **reads})
        return timed_poll(timeout_s)

    source.poll = first_poll  # type: ignore[method-assign]
    started = time.perf_counter()
    watcher = SnapshotWatcher(source, slot, poll_timeout_s=0.05).start()
    probe_x = torch.zeros(1, SPEC.feature_size)
    probes: list[tuple[float, float]] = []
    peak = 0
    while not stop.is_set():
        if slot.ready:
            with slot.acquire() as lease, torch.no_grad():
                lease.model(probe_x)
                mark = lease.info.data_watermark
            probes.append((time.time(), mark if mark is not None else 0.0))
            peak = max(peak, _rss_bytes()[0])
        time.sleep(0.005)
    watcher.stop()
    _trim()
    rss, hwm = _rss_bytes()
    out.put(
        {
            "probes": probes,
            "applied": applied,
            "rss": rss,
            "hwm": hwm,
            "peak": peak,
            "baseline": baseline,
            "with model": with_model,
            "stages": stages,
            "tail_gaps": sorted(tail_gaps, key=lambda g: g[1])[-5:],
            "tail_log": tail_log,
            "tail_rtt": tail_rtt,
            "tail_wait_ms": "10 (fixed)"
            if args.tail_wait_fixed
            else source._tail_wait.fetch_max_wait_ms,
            "catch_up": catch_up,
        }
    )


def _log_tail(source: Any) -> list[tuple[float, float, int]]:
    """Every poll of the server's tail consumer (partition 0) that returned records: (wall
    time it returned, s it blocked for them, records), to tell a fetch answered late from a
    server that was late to poll (issue 26, pace26k)."""
    log: list[tuple[float, float, int]] = []
    tail = source._tail
    original = tail.poll

    def logged(timeout_ms: int) -> Any:
        called = time.perf_counter()
        records = original(timeout_ms)
        if records:
            log.append((time.time(), time.perf_counter() - called, len(records)))
        return records

    tail.poll = logged
    return log


def _tail_rtt(source: Any, bootstrap: str, topic: str) -> list[tuple[float, int, float, float]]:
    """``--tail-stats``: the server's tail consumer rebuilt with librdkafka's statistics every
    200 ms: (wall time, Fetch requests sent so far, round-trip max and p99 ms over the
    window) for the broker; its requests are nearly all fetches of partition 0, so the round
    trip is how long the broker took to answer the tail."""
    from streamtrain.kafka import partition_reader
    from streamtrain.snapshot import readers

    windows: list[tuple[float, int, float, float]] = []

    def on_stats(raw: str) -> None:
        import json

        for broker in json.loads(raw)["brokers"].values():
            if broker.get("nodeid", -1) >= 0 and broker["rtt"]["cnt"]:
                rtt = broker["rtt"]
                fetches = int(broker.get("req", {}).get("Fetch", 0))
                windows.append((time.time(), fetches, rtt["max"] / 1e3, rtt["p99"] / 1e3))

    kafka = KafkaConnection(
        bootstrap,
        client="confluent",
        extra={"statistics.interval.ms": 200, "stats_cb": on_stats},
    )
    rebuilt = partition_reader(
        kafka,
        topic=topic,
        fetch_bytes=readers._CHUNK_FETCH_BYTES,
        queued_bytes=readers._CHUNK_QUEUE_BYTES,
    )
    source._tail._make_consumer = rebuilt._make_consumer  # not yet made: made on first use
    return windows


def _count_reads(source: Any) -> dict[str, float]:
    """Counts of the subscriber's reads of partition 0 (``PartitionReader.read`` calls: one
    seek and its fetches each) by its scan and chunk readers, filled in as they read."""
    counts = {"scan reads": 0.0, "chunk reads": 0.0}
    for name, reader in (("scan reads", source._readers.scan), ("chunk reads", source._reader)):

        def counting(
            start: int, end: int, deadline: float, _n: str = name, _r: Any = reader.read
        ) -> Any:
            counts[_n] += 1
            return _r(start, end, deadline)

        reader.read = counting
    return counts


def _subscriber(bootstrap: str, topic: str, slot: Any) -> Any:
    """The server's subscriber as ``streamtrain serve`` wires it: it knows the live weights,
    so it skips a base-lane base its deltas already passed."""
    from streamtrain.snapshot.subscriber import SnapshotSubscriber

    def live() -> Any:
        info = slot.info
        return None if info is None else info.header

    return SnapshotSubscriber(
        kafka=KafkaConnection(bootstrap),
        topic=topic,
        settings_hash=HASH,
        max_snapshot_bytes=4 * 1024**3,
        max_chunks=16384,
        live=live,
    )


def replica(args: argparse.Namespace, bootstrap: str, topic: str, out: Any) -> None:
    """A replica started mid-run (issue 26): time from its start to ready, and the part of it
    spent reading and verifying the one base it loads (``catch_up_order`` scans the
    manifests back to the newest base, then yields that base first: the base's read is the
    time from the end of the scan to its yield)."""
    from streamtrain.serve.weights.slot import WeightSlot
    from streamtrain.serve.weights.watcher import SnapshotWatcher
    from streamtrain.train.row_tracker import row_sparse_buffers, row_sparse_parameters

    entered = time.time()  # the spawned process has imported this module (torch included)
    if args.replica_nice:
        os.nice(args.replica_nice)  # every thread of the replica, its Kafka client's included
    torch.set_num_threads(1)
    _chunk_reads_sized(args)
    runtime, _ = _rss_bytes()
    model = _model(args, trainer=False)
    shared = frozenset(row_sparse_parameters(model)) | frozenset(row_sparse_buffers(model))
    slot = WeightSlot(model, shared=shared)
    # issue 26: the base written into the standby while it is read (slot rule 7), or, with
    # --replica-copy-after-read, copied after the read as before, in the same tree
    slot.streamed_loads = not args.replica_copy_after_read
    with_model, _ = _rss_bytes()
    built = time.time()
    source = _subscriber(bootstrap, topic, slot)
    original, original_start = source.catch_up_order, source._start_scan
    yields: list[tuple[str, float]] = []
    scans: list[Any] = []  # the catch-up's ManifestScan: its windows read

    def timed_start(timeout_s: float) -> Any:
        scan = original_start(timeout_s)
        if scan is not None:
            scans.append(scan)
            until_base = scan.until_base

            def timed_until_base(wanted: Any) -> Any:
                found = until_base(wanted)
                yields.append(("scanned", time.perf_counter()))
                return found

            scan.until_base = timed_until_base
        return scan

    def timed_catch_up_order(timeout_s: float, wanted: Any) -> Any:
        for snapshot in original(timeout_s, wanted):
            yields.append((snapshot.manifest.kind, time.perf_counter()))
            yield snapshot

    source._start_scan = timed_start  # type: ignore[method-assign]
    source.catch_up_order = timed_catch_up_order  # type: ignore[method-assign]
    started = time.perf_counter()
    watcher = SnapshotWatcher(source, slot, poll_timeout_s=0.05).start()
    while not slot.ready:
        time.sleep(0.005)
    ready = time.perf_counter() - started
    ready_at = time.time()
    _, hwm = _rss_bytes()
    info = slot.info
    paces = [r.last_pace for r in source._readers._made.values() if r.last_pace is not None]
    watcher.stop()
    base_at = next((i for i, (kind, _) in enumerate(yields) if kind == "base"), None)
    nan = float("nan")
    base_from = yields[base_at - 1][1] - started if base_at else nan
    base_to = yields[base_at][1] - started if base_at else nan
    out.put(
        {
            "ready s": ready,
            "base read s": base_to - base_from,
            # from the base's yield to ready: the slot's finiteness check and copy, or with
            # the streamed fill (slot rule 7) only the swap (issue 26)
            "base load s": ready - base_to,
            # phases, s after the watcher started: the scan of the manifests done, the base's
            # read started (after the scan, or after the deltas read before it)
            "scan done at s": yields[0][1] - started if yields else nan,
            "base read from s": base_from,
            "deltas read before it": base_at - 1 if base_at else 0,
            "scan windows": scans[0].windows if scans else 0,
            # the base partition's read paced (kafka/read_pace.py): pauses, s paused in all
            "pauses": sum(p.pauses for p in paces),
            "paused s": sum(p.paused_s for p in paces),
            "version": None if info is None else info.version,
            "lineage": None if info is None else info.header.lineage,
            # wall times (the parent prints them against the server's first prediction)
            "at entered": entered,
            "at model built": built,
            "at ready": ready_at,
            # memory: the runtime (as the server's), + the model, the peak by ready (VmHWM)
            "runtime GB": runtime / 1e9,
            "model built GB": with_model / 1e9,
            "peak GB": hwm / 1e9,
        }
    )


def train(
    args: argparse.Namespace, bootstrap: str, topic: str, mode: str, trace: PauseTrace
) -> dict[str, Any]:
    from streamtrain.snapshot.publisher import SnapshotPublisher
    from streamtrain.snapshot.writer import SnapshotWriter

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = _model(args, trainer=True).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    upkeep = None
    if mode == "dynamic":  # admissions and evictions before each step, as the trainer's
        import delta_dynamic

        upkeep = delta_dynamic.upkeep(model, optimizer)
    tracker = RowTracker(
        model,
        optimizer,
        base_every_deltas=10**9 if mode in ("delta", "dynamic") else 0,
        base_every_seconds=args.base_every or 1e9,
        clock=delta_rotation.clock(args),  # --rotate-after-replica
    )
    from streamtrain.snapshot import publisher as publisher_module

    if args.base_window_mb is not None:
        publisher_module.BASE_WINDOW_BYTES = int(args.base_window_mb * 1024 * 1024)
    if args.delta_window_mb is not None:  # 0: no window (the whole snapshot at once)
        window = int(args.delta_window_mb * 1024 * 1024)
        publisher_module.DELTA_WINDOW_BYTES = window or None
    publisher = SnapshotPublisher(
        kafka=KafkaConnection(bootstrap),
        topic=topic,
        model_name="bench",
        settings_hash=HASH,
    )
    sizes: list[tuple[str, int, float]] = []
    stages: dict[int, dict[str, float]] = {}  # version -> offered / write start / acked
    original = SnapshotWriter.write

    def timed_write(writer: SnapshotWriter, request: SnapshotRequest, **chain: Any) -> Any:
        # Both lanes (the delta lane's writer and the base lane's): bases are marked.
        started = time.perf_counter()
        stages.setdefault(request.version, {})["write"] = time.time()
        manifest = original(writer, request, **chain)
        stages[request.version]["acked"] = time.time()
        if manifest.kind == "base":
            stages[request.version]["base"] = 1.0
        sizes.append((manifest.kind, manifest.size_bytes, time.perf_counter() - started))
        return manifest

    SnapshotWriter.write = timed_write  # type: ignore[method-assign]
    produced: list[float] = []
    batch = args.batch
    interval = batch / args.rate
    started = time.time()
    next_snapshot = started
    step = 0
    stalls: list[Any] = []  # each snapshot's training-thread time, final once copied
    # The training thread's CPU time in take_snapshot: the stall less the time the loaded
    # machine ran other threads instead of it (the snapshot point only, not later saves).
    snapshot_cpu: list[float] = []
    copier = SnapshotCopier(model, optimizer)  # whole snapshots off the training thread
    control = PauseTrace()
    snapshot_step = -1  # the step a snapshot point followed
    if args.training_slice_us:  # an experiment, not the trainer's (sched_slice.py)
        print(
            f"  training thread's slice {args.training_slice_us} us: "
            f"{sched_slice.short_slices(int(args.training_slice_us * 1000))}"
        )
    while time.time() - started < args.seconds:
        due = started + step * interval
        if time.time() < due:
            time.sleep(due - time.time())
        produced_at = time.time()
        # log-uniform ranks: Zipf s ~ 1
        ids = (args.rows ** torch.rand(batch, device=device)).long() - 1
        x = torch.cat([ids.float().unsqueeze(1), torch.randn(batch, 8, device=device)], dim=1)
        control.begin()  # the control: ordinary steps' run-queue waits (pause_trace.py)
        if upkeep is not None:
            upkeep.before_step(delta_dynamic.DynamicIds.sparse(x), None)
        loss = (model(x).squeeze(-1) - ids.remainder(7).float()).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        produced.append(produced_at)
        # the step right after a snapshot point runs while the publisher works on the offer
        control.end(0.0, "after a snapshot point" if step - 1 == snapshot_step else "")
        if time.time() >= next_snapshot:
            snapshot_step = step
            trace.begin()
            cpu = time.thread_time()
            taken = take_snapshot(model, tracker, copier)  # what the trainer's loop does
            snapshot_cpu.append(time.thread_time() - cpu)
            trace.end(taken.stall.seconds)
            stalls.append(taken.stall)
            stages.setdefault(step, {}).update(watermark=produced_at, offered=time.time())
            publisher.offer(
                SnapshotRequest(
                    version=step,
                    run_id=mode,
                    tensors=taken.tensors,
                    data_watermark=produced_at,
                    offsets={},
                    created_at=time.time(),
                    wait_ready=taken.wait_ready,
                    rows=taken.rows,
                    complete=taken.complete,
                )
            )
            next_snapshot = time.time() + args.snapshot_every
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.time() - started
    publisher.close(120)
    copier.close()
    trace.close()
    control.close()
    return {
        "produced": produced,
        "sizes": sizes,
        "elapsed": elapsed,
        "steps": step,
        "copy_s": [stall.seconds for stall in stalls],
        "pause_s": [stall.longest for stall in stalls],
        "snapshot_cpu_s": snapshot_cpu,
        "stages": stages,
        "trace": trace,
        "control": control,
    }


def _freshness(
    produced: list[float], probes: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """(production time, freshness) of every batch a probe served (probes in time order)."""
    out = []
    j = 0
    for t in produced:
        while j < len(probes) and probes[j][1] < t:
            j += 1
        if j == len(probes):
            break
        out.append((t, probes[j][0] - t))
    return out


def _print_stages(
    result: dict[str, Any], served: dict[str, Any], first: float, worst: list[tuple[float, float]]
) -> None:
    """For each of the worst batches: the snapshot that first carried it, stage by stage
    (seconds after the batch was produced): offered (copied), publish started, acked, received
    by the server's subscriber, applied."""
    trained = result["stages"]
    versions = sorted(v for v in trained if "watermark" in trained[v])
    for fresh, at in worst:
        produced = first + at
        carrier = next((v for v in versions if trained[v]["watermark"] >= produced), None)
        if carrier is None:
            continue
        row = {**trained[carrier], **served["stages"].get(carrier, {})}
        # the snapshot actually published may be a later one (merged in the newest-wins slot)
        pub = next((v for v in sorted(trained) if v >= carrier and "acked" in trained[v]), None)
        if pub is not None and pub != carrier:
            row.update({k: trained[pub][k] for k in ("write", "acked")})
            row.update(served["stages"].get(pub, {}))
        steps = "  ".join(
            f"{k}=+{row[k] - produced:.2f}"
            for k in ("offered", "write", "acked", "received", "applied")
            if k in row
        )
        print(f"  batch +{at:.1f}s fresh {fresh:.2f}s: snapshot {carrier}->{pub} {steps}")
        if "acked" in row:  # the tail's polls that returned records from the ack to receipt
            got = [
                (t, b, n)
                for t, b, n in served["tail_log"]
                if row["acked"] <= t <= row.get("received", row["acked"] + 5)
            ]
            print(
                "    tail: "
                + (
                    ", ".join(f"{n} at +{t - produced:.2f} (blocked {b:.2f})" for t, b, n in got)
                    or "no records"
                )
            )
            rtt = [
                (t, f, mx, p99)
                for t, f, mx, p99 in served["tail_rtt"]
                if row["acked"] <= t <= row.get("received", row["acked"] + 5) + 0.2
            ]
            if rtt:
                print(
                    "    tail fetch round trips (200 ms windows): "
                    + ", ".join(f"max {mx:.0f} ms at +{t - produced:.2f}" for t, _, mx, _ in rtt)
                    + f"; {rtt[-1][1] - rtt[0][1]} fetches"
                )
    gaps = ", ".join(f"{gap:.2f}s@+{t - first:.1f}s" for t, gap in served["tail_gaps"])
    print(f"  longest waits between subscriber polls: {gaps}")
    print(f"  the tail's fetch wait at the end: {served['tail_wait_ms']} ms")


def _print_pauses(
    trace: PauseTrace,
    first: float,
    late_at: list[float],
    replica_row: dict[str, Any],
    control: PauseTrace | None = None,
) -> None:
    """The snapshot points' pauses of the training thread, split by what it waited for
    (``pause_trace.py``): per phase of the run, and the longest eight (s after the server's
    first prediction)."""
    ready = replica_row.get("at ready")
    phases = {"before the first prediction (the first base)": (0.0, first)}
    if late_at and ready is not None:
        phases["first prediction to replica start"] = (first, late_at[0])
        phases["replica start to ready"] = (late_at[0], ready)
        phases["after the replica is ready"] = (ready, float("inf"))
    else:
        phases["after the first prediction"] = (first, float("inf"))
    print("  snapshot points, the training thread's pauses (pause_trace.py):")
    for label, (a, b) in phases.items():
        print(f"    {label}: {trace.totals(a, b)}")
    for pause in trace.longest(8):
        print(f"    pause {pause.line(first)}")
    if control is None:
        return
    for label, start in (("whole run", 0.0), ("after the first prediction", first)):
        print(f"  run-queue waits, snapshot points against ordinary steps (the control), {label}:")
        for line in run_queue_control(trace.pauses, control.pauses, start):
            print(f"    {line}")


def _print_processes(
    procs: ProcessWatch,
    first: float,
    late_at: list[float],
    replica_row: dict[str, Any],
    served: dict[str, Any],
) -> None:
    """Cores each process used before, while and after a replica started (CPU s per wall s;
    2 cores in all on the bench machine), and the replica's start-up, s after the server's
    first prediction: which process took the machine while freshness climbed."""
    if not late_at or "at ready" not in replica_row:
        whole = procs.cores(first, served["probes"][-1][0] if served["probes"] else first)
        print("  cores used, whole run: " + ", ".join(f"{k} {v:.2f}" for k, v in whole.items()))
        return
    start, ready = late_at[0], replica_row["at ready"]
    phases = {
        "the first base (10 s before the first prediction)": (first - 10, first),
        "10 s before the replica": (start - 10, start),
        "replica start to ready": (start, ready),
        "10 s after ready": (ready, ready + 10),
    }
    for label, (a, b) in phases.items():
        used = procs.cores(a, b)
        print(f"  cores used, {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in used.items()))
    marks = {
        "started": start,
        "imported": replica_row["at entered"],
        "model built": replica_row["at model built"],
        "ready": ready,
    }
    print(
        "  replica, s after the first prediction: "
        + ", ".join(f"{k} {t - first:+.1f}" for k, t in marks.items())
    )


def _plot(
    args: argparse.Namespace,
    mode: str,
    pairs: list[tuple[float, float]],
    first: float,
    stages: dict[int, dict[str, float]],
    replica_span: tuple[float, float] | None = None,
) -> None:
    """Freshness of every batch against its production time (s after the server's first
    prediction), base publications shaded from write start to acknowledgement (a line):
    a stall is seen."""
    try:
        import matplotlib
    except ImportError:  # the [bench] extra: the run's figures still print
        print("  plot: not written, matplotlib is not installed (pip install 'streamtrain[bench]')")
        return
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4))
    axes.plot([t - first for t, _ in pairs], [f for _, f in pairs], ".", markersize=2)
    for version, row in stages.items():
        if "base" in row:
            axes.axvspan(row["write"] - first, row["acked"] - first, color="tab:red", alpha=0.1)
            axes.axvline(row["acked"] - first, color="tab:red", linewidth=0.8)
            axes.annotate(
                f"base {version}",
                (row["acked"] - first, 0.95),
                xycoords=axes.get_xaxis_transform(),
                color="tab:red",
            )
    if replica_span is not None:  # a replica's start to its ready
        axes.axvspan(replica_span[0] - first, replica_span[1] - first, color="tab:green", alpha=0.1)
        axes.annotate(
            "replica", (replica_span[0] - first, 0.85), xycoords=axes.get_xaxis_transform()
        )
    axes.axvline(args.warmup, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlabel("batch produced, s after the server's first prediction")
    axes.set_ylabel("freshness, s")
    axes.set_yscale("log")
    axes.set_title(
        f"bench/delta.py {mode}: {args.rows * args.dim * 4 / 1e9:.2f} GB table, "
        f"{args.rate:.0f} samples/s, snapshot every {args.snapshot_every} s"
    )
    figure.tight_layout()
    path = Path(args.plot).with_suffix(f".{mode}.png")
    figure.savefig(path, dpi=110)
    print(f"  plot: {path}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(args: argparse.Namespace, broker: EmbeddedBroker, mode: str) -> dict[str, Any]:
    topic = f"bench-delta-{mode}"
    broker.create_topics([topic], args.partitions)
    ctx = mp.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    args = argparse.Namespace(**vars(args), dynamic=mode == "dynamic")
    server = ctx.Process(target=serve, args=(args, broker.bootstrap_servers, topic, out, stop))
    server.start()
    assert server.pid is not None and broker.pid is not None
    # the trainer's process holds the publisher (both lanes) and the bench's own threads
    procs = ProcessWatch({"trainer": os.getpid(), "broker": broker.pid, "server": server.pid})
    procs.start()
    trace = PauseTrace(args.trace_others)  # each snapshot point: CPU, run-queue, blocked
    trace.processes.update({"broker": broker.pid, "server": server.pid})
    late_out: Any = ctx.Queue()
    late_box: list[Any] = []  # the replica process, once started
    late_at: list[float] = []

    def late_start() -> None:
        late_at.append(time.time())
        proc = ctx.Process(target=replica, args=(args, broker.bootstrap_servers, topic, late_out))
        proc.start()
        assert proc.pid is not None
        procs.add("replica", proc.pid)
        trace.processes["replica"] = proc.pid
        late_box.append(proc)
        if args.rotate_after_replica:
            delta_rotation.open_when_gone(proc)

    timer = threading.Timer(args.replica_at or 0.0, late_start)
    if args.replica_at is not None:
        timer.start()
    result = train(args, broker.bootstrap_servers, topic, mode, trace)
    time.sleep(args.drain)  # let the last snapshots reach the server
    replica_row: dict[str, Any] = {}
    timer.cancel()
    if late_box:
        replica_row = late_out.get(timeout=600)
        procs.sample()
        late_box[0].join(60)
    stop.set()
    served = out.get(timeout=300)
    procs.sample()
    server.join(60)
    procs.stop()
    pairs = _freshness(result["produced"], served["probes"])
    first = served["probes"][0][0] if served["probes"] else 0.0
    # Measured: batches produced --warmup s after the server's first prediction. (Before this
    # fix the bench counted the warmup from the trainer's first batch but labelled the worst
    # batches relative to the first prediction: see bench/README.md, Delta.)
    fresh = [f for t, f in pairs if t >= first + args.warmup]
    old = [f for t, f in pairs if t >= result["produced"][0] + args.warmup]
    print(f"  p99 with the warmup counted from the trainer's first batch: {_pct(old, 0.99):.2f} s")
    ages = sorted((f, t - first) for t, f in pairs if t >= first + args.warmup)
    # --- large (issue 26): the freshness-over-time plot ---
    if args.plot and pairs:
        span = (late_at[0], replica_row["at ready"]) if "at ready" in replica_row else None
        _plot(args, mode, pairs, first, result["stages"], span)
    worst = ", ".join(f"{f:.2f}s@+{at:.1f}s" for f, at in ages[-5:])
    _print_stages(result, served, first, ages[-5:])
    _print_processes(procs, first, late_at, replica_row, served)
    ready_at = replica_row.get("at ready")
    print_pressure(procs.pressure, first, (late_at[0], ready_at) if ready_at else None, ages[-5:])
    _print_pauses(result["trace"], first, late_at, replica_row, result["control"])
    for name in procs.rss:  # s from the run's start (the trainer's first batch)
        profile = procs.rss_profile(name, result["produced"][0], 10.0)
        print(f"  {name} VmRSS GB, max per 10 s: " + " ".join(f"{g:.2f}" for g in profile))
    sizes = result["sizes"]
    deltas = [s for s in sizes if s[0] == "delta"]
    model_bytes = args.rows * args.dim * 4
    return {
        "mode": mode,
        "samples/s": result["steps"] * args.batch / result["elapsed"],
        "fresh p50": _pct(fresh, 0.5),
        "fresh p99": _pct(fresh, 0.99),
        "measured": len(fresh),
        "of": len(result["produced"]),
        "published MB/s": sum(s[1] for s in sizes) / result["elapsed"] / 1e6,
        "snapshots": len(sizes),
        "bases": len(sizes) - len(deltas),
        "delta MB": statistics.median(s[1] for s in deltas) / 1e6 if deltas else float("nan"),
        "publish s": statistics.median(s[2] for s in (deltas or sizes)),
        # each base's write, chunks to acknowledged manifest (the first: the delta lane's)
        "base write s": " ".join(f"{s[2]:.2f}" for s in sizes if s[0] == "base"),
        "stall p50 s": statistics.median(result["copy_s"]),
        # the first snapshot is whole (nothing to complete a base from yet): its large
        # tensors are copied off the training thread (train/snapshot_copy.py)
        "first snapshot stall s": result["copy_s"][0],
        "stall max s": max(result["copy_s"]),
        "stall p99 s": _pct(result["copy_s"], 0.99),
        # the most the training thread stopped at once for a snapshot (its snapshot point or
        # one step's saves); the stall above sums every such pause of a snapshot
        "longest pause max s": max(result["pause_s"]),
        # the same snapshot points less the time the training thread sat runnable in the
        # kernel's run queue meanwhile (other processes on the cores: bench/pause_trace.py)
        "stall max less run-queue s": max(
            (p.stall_off_queue_ms for p in result["trace"].pauses), default=0.0
        )
        / 1e3,
        "snapshot-point CPU p99 s": _pct(result["snapshot_cpu_s"], 0.99),
        "snapshot-point CPU max s": max(result["snapshot_cpu_s"]),
        "apply s": statistics.median(served["applied"]) if served["applied"] else float("nan"),
        # sampled VmRSS while serving (the figure of earlier rows), then the honest peak:
        # VmHWM over the process's life, the base load included
        "peak RSS/model": served["peak"] / model_bytes,
        "server VmHWM/model": served["hwm"] / model_bytes,
        "server runtime GB": served["baseline"] / 1e9,
        "server (VmHWM-runtime)/model": (served["hwm"] - served["baseline"]) / model_bytes,
        "server (VmHWM-runtime-model built)/model": (served["hwm"] - served["with model"])
        / model_bytes,
        "end RSS/model (trimmed)": served["rss"] / model_bytes,
        "end (RSS-torch)/model": (served["rss"] - served["baseline"]) / model_bytes,
        **{f"peak GB {name}": peak / 1e9 for name, peak in procs.peak.items()},
        "worst (freshness@produced after first prediction)": worst,
        **{f"catch-up {k}": v for k, v in served["catch_up"].items()},
        **{f"replica {k}": v for k, v in replica_row.items()},
    }


def _encode_with(encoder: str) -> None:
    """The publisher's encoder as it was, bytes identical: ``copy``, one model-sized buffer
    filled with torch (``payload.encode_view``, before ``encode_parts``); ``safetensors``,
    ``safetensors.torch.save`` (before that), which holds the GIL for its whole copy."""
    from safetensors.torch import save

    from streamtrain.snapshot import writer
    from streamtrain.snapshot.manifest import TensorInfo
    from streamtrain.snapshot.payload import EncodedPayload, dtype_name, encode_view

    def encode(tensors: Any, streamed: Any = None) -> Any:
        if streamed:  # a base streamed from the publisher's copy: its bytes joined first
            tensors = dict(tensors)
            for name, pieces in streamed.items():
                joined = bytearray(b"".join(bytes(piece) for piece in pieces()))
                like = tensors[name]
                tensors[name] = torch.frombuffer(joined, dtype=like.dtype).reshape(like.shape)
        if encoder == "copy":
            view, infos = encode_view(tensors)
            return EncodedPayload([view]), infos
        prepared = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        infos = [
            TensorInfo(name=k, dtype=dtype_name(v.dtype), shape=list(v.shape))
            for k, v in prepared.items()
        ]
        return EncodedPayload([memoryview(save(prepared))]), infos

    writer.encode_parts = encode  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rate", type=float, default=10_000.0, help="samples per second")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--snapshot-every", type=float, default=0.2)
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="batches produced before the server's first prediction + this are not measured",
    )
    parser.add_argument("--drain", type=float, default=5.0)
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["delta", "full"],
        choices=["delta", "full", "dynamic"],
        help="dynamic: deltas of a dynamic table, full and churning (bench/delta_dynamic.py)",
    )
    # --- large (issue 26): table size in GB, base rotation, the plot ---
    parser.add_argument(
        "--table-gb", type=float, default=None, help="table size in GB (sets --rows for --dim)"
    )
    parser.add_argument(
        "--base-every", type=float, default=None, help="delta mode: a new base every N s"
    )
    parser.add_argument(
        "--plot", default=None, help="write the freshness-over-time PNG(s) here (PATH.MODE.png)"
    )
    parser.add_argument(
        "--replica-at",
        type=float,
        default=None,
        help="start a new replica N s into the run and report its time to ready",
    )
    parser.add_argument(
        "--rotate-after-replica",
        action="store_true",
        help="hold base rotations until the --replica-at replica has exited, then rotate at "
        "once and every --base-every s: the embedded broker keeps every base, and this fits "
        "a rotation and a replica in one run at 4 GB (bench/delta_rotation.py)",
    )
    parser.add_argument(
        "--server-late-s",
        type=float,
        default=0.0,
        help="start the tailing server N s after the trainer: its catch-up (base + deltas) "
        "is timed and its topic reads counted (catch-up s, scan reads, chunk reads)",
    )
    parser.add_argument(
        "--replica-copy-after-read",
        action="store_true",
        help="the replica copies its base into its model after the read, as before issue 26's "
        "streamed fill (serve/weights/standby_fill.py), for a before/after run in one tree",
    )
    parser.add_argument(
        "--server-draws",
        action="store_true",
        help="build the server's and replica's models with their random initial weights, as "
        "before serve/weights/unfilled.py (for a before/after run in one tree)",
    )
    parser.add_argument(
        "--replica-nice",
        type=int,
        default=0,
        help="run the replica at this niceness (0-19): separates its CPU's share in the "
        "tailing server's freshness from the broker's serving of its base",
    )
    parser.add_argument(
        "--chunk-fetch-mb",
        type=float,
        default=None,
        help="the server's and replica's chunk readers' fetch size, MiB (snapshot/readers.py); "
        "64 with --chunk-queue-mb 64 is the old read on the embedded broker (16 MiB a "
        "partition under a 64 MiB request, which it served up to 64 MiB)",
    )
    parser.add_argument(
        "--base-read-pace",
        choices=["on", "off"],
        default="off",
        help="on: the base partition's reads (the replica's base) paced by kafka/read_pace.py "
        "(snapshot/readers.py BASE_READ_PACE; off by default, bench/README.md says why)",
    )
    parser.add_argument(
        "--tail-wait-fixed",
        action="store_true",
        help="the tailing server's fetch wait stays 10 ms: its FetchWaitTuner, which widens "
        "it to 250 ms when records wait while few arrive, is off (issue 26, pace26k)",
    )
    parser.add_argument(
        "--tail-stats",
        action="store_true",
        help="the tailing server's tail consumer reports librdkafka statistics every 200 ms: "
        "its fetches' round trips are printed per worst batch",
    )
    parser.add_argument(
        "--chunk-queue-mb",
        type=float,
        default=None,
        help="their read-ahead, MiB (librdkafka's queued.max.messages.kbytes; 64 before)",
    )
    parser.add_argument(
        "--base-window-mb",
        type=float,
        default=None,
        help="the base lane's acknowledgement window (publisher.BASE_WINDOW_BYTES), MiB",
    )
    parser.add_argument(
        "--delta-window-mb",
        type=float,
        default=None,
        help="the delta lane's acknowledgement window (publisher.DELTA_WINDOW_BYTES), MiB; "
        "0: none, a whole snapshot's chunks all queued in the producer at once (as before)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=wire.SNAPSHOT_PARTITIONS,
        help="of the snapshot topic: 2 puts the base lane's chunks on partition 1 (the layout "
        "streamtrain creates); 1 is the old layout, every chunk on partition 0",
    )
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=None,
        help="sys.setswitchinterval for the trainer process (CPython's default is 5 ms)",
    )
    sched_slice.add_slice_argument(parser)
    parser.add_argument(
        "--trace-others",
        action="store_true",
        help="beside each snapshot point's pause, the CPU every other thread of the trainer "
        "and the broker, server and replica used meanwhile (costs the training thread ~1 ms "
        "of CPU per snapshot: bench/pause_trace.py)",
    )
    parser.add_argument(
        "--encoder",
        choices=["parts", "copy", "safetensors"],
        default="parts",
        help="parts: the publisher's encoder (payload.encode_parts, no copy of the tensors); "
        "copy: the whole payload copied into one buffer first (payload.encode_view, the "
        "encoder before it); safetensors: safetensors.torch.save, which also holds the GIL "
        "for the whole copy (the encoder before that), to compare",
    )
    parser.add_argument(
        "--device", default="cpu", help="the trainer's device (cpu, cuda); the server's is cpu"
    )
    args = parser.parse_args()
    if args.rotate_after_replica and (args.replica_at is None or args.base_every is None):
        parser.error("--rotate-after-replica needs --replica-at and --base-every")
    if args.table_gb is not None:
        args.rows = int(args.table_gb * 1e9 / (args.dim * 4))
    torch.set_num_threads(1)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    if args.encoder != "parts":
        _encode_with(args.encoder)
    print(
        f"table {args.rows} x {args.dim} fp32 = {args.rows * args.dim * 4 / 1e9:.2f} GB, "
        f"{args.rate:.0f} samples/s target, batch {args.batch}, snapshot every "
        f"{args.snapshot_every} s, {args.seconds} s per mode, trainer on {args.device}, "
        f"{args.partitions} snapshot partition(s), switch interval "
        f"{sys.getswitchinterval() * 1000:g} ms"
    )
    with EmbeddedBroker() as broker:
        for mode in args.modes:
            row = run(args, broker, mode)
            print(
                "  ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
