"""Streamed base loads on the real broker (issue 26): a base's chunks go to a file as they
arrive and are copied into the model block by block, so a load stays under the issue's bound
(peak RSS <= 1.3 x the model + the runtime, VmHWM in a fresh process); bad chunks (altered,
missing, swapped) leave the old weights serving, whole."""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from kafka import KafkaProducer

from streamtrain.kafka import KafkaConnection, create_topics
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.serve.weights.watcher import SnapshotWatcher
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.payload import encode_state, sha256_hex, split_chunks
from streamtrain.snapshot.subscriber import SnapshotSubscriber
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.row_tracker import row_sparse_parameters
from tests.delta_fixtures import (
    SparseTrainer,
    build_model,
    model_state,
    snapshot_request,
    sparse_publisher,
)
from tests.integration.snapshot_harness import send_chunks, send_manifest

HASH = "c" * 64
BIG = {"rows": 1_048_576, "dim": 64, "id_features": 2}  # a 256 MiB table
SMALL = {"rows": 500, "dim": 8, "id_features": 2}


def _model(params: dict[str, int], seed: int) -> torch.nn.Module:
    return build_model(seed, params)


def _server(
    bootstrap: str, topic: str, params: dict[str, int], before_start: Any = None
) -> tuple[WeightSlot, Any]:
    """A slot and its watcher; ``before_start()`` runs once the model exists, before the
    watcher (and so before any Kafka client or read)."""
    model = _model(params, seed=99)
    slot = WeightSlot(model, shared=frozenset(row_sparse_parameters(model)))
    source = SnapshotSubscriber(kafka=KafkaConnection(bootstrap), topic=topic, settings_hash=HASH)
    if before_start is not None:
        before_start()
    return slot, SnapshotWatcher(source, slot, poll_timeout_s=0.1).start()


def _await_version(slot: WeightSlot, version: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while slot.info is None or slot.info.version != version:
        assert time.monotonic() < deadline, f"version {version} not live: {slot.info}"
        time.sleep(0.05)


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match is not None
    return int(match.group(1))


def _measure_load(bootstrap: str, topic: str, version: int, out: Any) -> None:
    """In a fresh process: build the server's model, note its RSS and reset the peak RSS
    (before the watcher exists: its Kafka clients count as the load's), load the base,
    report both."""
    logging.basicConfig(level=logging.WARNING)
    before: list[int] = []

    def reset_peak() -> None:
        before.append(_status_kib("VmRSS"))
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here

    slot, watcher = _server(bootstrap, topic, BIG, reset_peak)
    _await_version(slot, version)
    out.put((before[0] * 1024, _status_kib("VmHWM") * 1024))
    watcher.stop()


@pytest.mark.parametrize("preceded_by", ["nothing", "an-older-snapshot"])
def test_a_base_load_costs_a_fraction_of_the_model(
    kafka_bootstrap: str, unique_name: str, preceded_by: str
) -> None:
    """The base first on the topic; or after an older snapshot, whose manifest a new replica's
    scan reads (the record just before the base's chunks) and whose reader then sits at the
    base's first chunk."""
    create_topics(KafkaConnection(kafka_bootstrap), [unique_name])
    version = 1
    if preceded_by == "an-older-snapshot":
        older = SnapshotWriter(
            kafka=KafkaConnection(kafka_bootstrap), topic=unique_name, model_name="m",
            settings_hash=HASH, chunk_bytes=512 * 1024,
        )  # fmt: skip
        older.write(snapshot_request(_model(SMALL, seed=2), 1, "run", None))
        older.close(10)
        version = 2
    model = _model(BIG, seed=1)
    table_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    writer = SnapshotWriter(
        kafka=KafkaConnection(kafka_bootstrap),
        topic=unique_name,
        model_name="m",
        settings_hash=HASH,
        chunk_bytes=512 * 1024,
    )
    writer.write(snapshot_request(model, version, "run", None))
    writer.close(10)
    del model
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    process = ctx.Process(target=_measure_load, args=(kafka_bootstrap, unique_name, version, out))
    process.start()
    before, peak = out.get(timeout=180)
    process.join(30)
    # The bound: peak RSS during a base load <= 1.3 x the model + the runtime. The
    # server's RSS before its first read is the runtime (interpreter, torch, the modules) plus
    # the model as built (the slot's tensors, every page touched), so the load may add at most
    # 0.3 x the model: its Kafka clients (4 MiB fetches, 8 MiB read ahead per chunk reader),
    # one chunk, one 4 MiB copy block, one 1 MiB hash block, the allocator's slack. Measured
    # 23-28 MiB on a 256 MiB table (bound 77 MiB) either way; after an older snapshot, 90 MiB
    # while the scan's reader read ahead 64 MiB of the base's chunks (readers.py, now 1 MiB).
    # Held at once before the streamed load: every chunk, the joined payload and the decoded
    # tensors, 2-3 x the model on top.
    assert peak - before <= 0.3 * table_bytes, (
        f"a base load added {(peak - before) / 2**20:.1f} MiB to a {table_bytes / 2**20:.0f} MiB "
        f"model ({(peak - before) / table_bytes:.3f} x; the bound is 0.3 x)"
    )


def _publish_by_hand(
    bootstrap: str,
    topic: str,
    tensors: dict[str, torch.Tensor],
    version: int,
    how: str,
    settings_hash: str = HASH,
) -> None:
    """Write a base as the publisher does (chunk records with their own sha256, then the
    manifest), bent as ``how`` says: ``altered`` (a byte of chunk 1 flipped after hashing),
    ``missing`` (chunk 1 never written), ``swapped`` (chunks 1 and 2 carry each other's
    bytes, each under a digest of what it carries), ``reordered`` (records written in a
    shuffled order, every one intact) or ``intact``."""
    payload, infos = encode_state(tensors)
    pieces = [bytes(p) for p in split_chunks(payload, 1024)]
    assert len(pieces) >= 4
    sid = f"run/{version}"
    sends = [(i, piece, sha256_hex(piece)) for i, piece in enumerate(pieces)]
    if how == "altered":
        flipped = bytearray(pieces[1])
        flipped[7] ^= 0xFF
        sends[1] = (1, bytes(flipped), sends[1][2])
    elif how == "missing":
        del sends[1]
    elif how == "swapped":
        sends[1], sends[2] = (
            (1, pieces[2], sha256_hex(pieces[2])),
            (2, pieces[1], sha256_hex(pieces[1])),
        )
    elif how == "reordered":
        random.Random(version).shuffle(sends)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    first = send_chunks(producer, topic, "m", sid, sends, len(pieces))
    manifest = SnapshotManifest(
        model_name="m",
        settings_hash=settings_hash,
        run_id="run",
        version=version,
        created_at=time.time(),
        data_watermark=None,
        offsets={},
        tensors=infos,
        size_bytes=len(payload),
        sha256=sha256_hex(payload),
        chunk_count=len(pieces),
        chunk_bytes=1024,
        first_chunk_offset=first,
    )
    send_manifest(producer, topic, "m", sid, manifest.model_dump_json().encode())
    producer.close()


@pytest.mark.parametrize("tail_saw_chunks", [True, False], ids=["tail", "new-replica"])
def test_bad_chunks_leave_the_old_weights_serving(
    kafka_bootstrap: str, unique_name: str, caplog: pytest.LogCaptureFixture, tail_saw_chunks: bool
) -> None:
    create_topics(KafkaConnection(kafka_bootstrap), [unique_name])
    states = {v: model_state(_model(SMALL, seed=v)) for v in range(1, 6)}
    slot: WeightSlot | None = None
    watcher = None
    if tail_saw_chunks:  # a running server that reads every chunk as it is written
        slot, watcher = _server(kafka_bootstrap, unique_name, SMALL)
    _publish_by_hand(kafka_bootstrap, unique_name, states[1], 1, "intact")
    for version, how in ((2, "altered"), (3, "missing"), (4, "swapped")):
        _publish_by_hand(kafka_bootstrap, unique_name, states[version], version, how)
    if slot is None:  # a new replica that scans the topic and falls back past the bad ones
        slot, watcher = _server(kafka_bootstrap, unique_name, SMALL)
    try:
        with caplog.at_level(logging.WARNING):
            _await_version(slot, 1)
            deadline = time.monotonic() + 60
            while not {"checksum", "incomplete"} <= _reasons(caplog.text):
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
        with slot.acquire() as lease:
            held = lease.model.state_dict()
            assert lease.info.version == 1
            assert all(torch.equal(held[k], states[1][k]) for k in states[1])
        _publish_by_hand(kafka_bootstrap, unique_name, states[5], 5, "reordered")
        _await_version(slot, 5)
        with slot.acquire() as lease:
            held = lease.model.state_dict()
            assert all(torch.equal(held[k], states[5][k]) for k in states[5])
    finally:
        assert watcher is not None
        watcher.stop()


def _reasons(log_text: str) -> set[str]:
    return set(re.findall(r"rejected \((\w+)\)", log_text))


def test_base_rotations_under_requests_fail_none(kafka_bootstrap: str, unique_name: str) -> None:
    """Bases (streamed, written into the shared table in the slot's exclusive section) and
    deltas keep arriving while three threads run forward passes: no request fails, and the
    server ends on the trainer's newest weights."""
    create_topics(KafkaConnection(kafka_bootstrap), [unique_name])
    slot, watcher = _server(kafka_bootstrap, unique_name, SMALL)
    trainer = SparseTrainer(base_every_deltas=2)  # base, delta, delta, base, ...
    # chunks of 2 KiB: a base of many chunks
    publisher = sparse_publisher(kafka_bootstrap, unique_name, HASH, chunk_bytes=2048)
    stop = threading.Event()
    failures: list[BaseException] = []
    served: list[tuple[int, str]] = []

    def requests() -> None:
        x = torch.tensor([[1.0, 2.0, 0.5, -0.5]])
        while not stop.is_set():
            if not slot.ready:
                time.sleep(0.001)
                continue
            try:
                with slot.acquire() as lease, torch.no_grad():
                    out = lease.model(x)
                    assert bool(torch.isfinite(out).all())
                    served.append((lease.info.version, lease.info.header.lineage))
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=requests, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(10):
            trainer.train(2)
            publisher.offer(trainer.request())
            assert publisher.flush(30)
            _await_version(slot, trainer.step)
            # Requests have run on this version before the next one is published, so they
            # run across every base rotation (awaited, not timed).
            deadline = time.monotonic() + 60
            while not any(version == trainer.step for version, _ in list(served)):
                assert time.monotonic() < deadline and not failures, failures
                time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        publisher.close(10)
        watcher.stop()
    assert failures == []
    lineages = {lineage for _, lineage in served}
    assert len(lineages) == 4, lineages  # requests ran on every base: steps 2, 8, 14, 20
    with slot.acquire() as lease:
        held = lease.model.state_dict()
        final = trainer.state()
        assert all(torch.equal(held[k], final[k]) for k in final)
