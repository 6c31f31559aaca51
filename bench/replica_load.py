"""Where a new replica's time goes after it has read its base, per phase (issue 26).

Run: ``.venv/bin/python bench/replica_load.py --table-gb 1.024 --runs 2``

One base of a ``--table-gb`` hashed table (``bench/delta.py``'s model, 64 fp32 a row) is
written to the embedded broker by a ``SnapshotWriter``; then, ``--runs`` times, a fresh
process builds a replica as ``streamtrain serve`` does (the model without its initial draws,
the slot, the subscriber, the watcher) and loads that base. The replica's watcher thread does
all the work, so each phase is timed on it: wall seconds, that thread's CPU seconds and its
minor page faults (``getrusage(RUSAGE_THREAD)``). Phases:

* ``scan``: the watcher's start to the scan's end (the manifests read back to the base);
* ``read``: the base's chunks read (each chunk's sha256, the running payload sha256, the spool
  write; with the overlapped load also the copy into the standby and its finiteness check);
* ``read: spool pwrite``, ``read: fill``: parts of ``read`` (the spool's file writes; the
  fill's copies and checks);
* ``verify``: the spool's checks, the payload's sha256, the mapping and its header;
* ``check``: the slot's step 1 (names, shapes, finiteness over the mapped payload);
* ``copy``: the copy into the standby tensors (the shared table's included);
* ``ready``: the watcher's start to the slot's first swap; ``after read`` = ready - scan - read.

``--streamed off`` loads the old way in the same tree (``WeightSlot.streamed_loads``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from delta_procs import status_bytes
from embedding_model import build_id_embedding

from streamtrain.broker import EmbeddedBroker
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.unfilled import initial_draws_skipped
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.writer import SnapshotWriter
from streamtrain.train.hooks import SnapshotRequest

SPEC = SampleSpec(feature_shape=(9,), task="regression")
HASH = settings_hash({"bench": "replica_load"})
DIM = 64


def _model(rows: int, draws: bool) -> torch.nn.Module:
    params = {"rows": rows, "dim": DIM, "id_features": 1}
    if draws:
        return build_id_embedding(SPEC, params)
    with initial_draws_skipped():
        return build_id_embedding(SPEC, params)


def _usage() -> tuple[float, float, int]:
    use = resource.getrusage(resource.RUSAGE_THREAD)
    return time.perf_counter(), use.ru_utime + use.ru_stime, use.ru_minflt


class _Phases:
    """Wall, thread-CPU and minor faults per named phase, measured on the calling thread."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}
        self.marks: dict[str, tuple[float, float, int]] = {}

    def wrap(self, name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = _usage()
            try:
                return fn(*args, **kwargs)
            finally:
                end = _usage()
                span = self.spans.setdefault(name, [0.0, 0.0, 0.0])
                for i in range(3):
                    span[i] += end[i] - start[i]

        return timed

    def mark(self, name: str) -> None:
        self.marks[name] = _usage()


def _replica(bootstrap: str, topic: str, rows: int, streamed: bool, out: Any) -> None:
    from streamtrain.metrics import SERVER_REGISTRY
    from streamtrain.serve.weights import slot as slot_module
    from streamtrain.serve.weights.slot import WeightSlot
    from streamtrain.serve.weights.standby_fill import StandbyFill
    from streamtrain.serve.weights.watcher import SnapshotWatcher
    from streamtrain.snapshot import scan as scan_module
    from streamtrain.snapshot import subscriber as subscriber_module
    from streamtrain.snapshot.subscriber import SnapshotSubscriber
    from streamtrain.train.row_tracker import row_sparse_buffers, row_sparse_parameters

    torch.set_num_threads(1)
    model = _model(rows, draws=False)
    shared = frozenset(row_sparse_parameters(model)) | frozenset(row_sparse_buffers(model))
    slot = WeightSlot(model, shared=shared)
    slot.streamed_loads = streamed
    phases = _Phases()
    subscriber_module.verify_spool = phases.wrap("verify", subscriber_module.verify_spool)
    subscriber_module.read_chunks = phases.wrap("read", scan_module.read_chunks)
    os.pwrite = phases.wrap("read: spool pwrite", os.pwrite)
    StandbyFill.write = phases.wrap("read: fill", StandbyFill.write)  # type: ignore[method-assign]
    slot.check = phases.wrap("check", slot.check)  # type: ignore[method-assign]
    slot._copy_into = phases.wrap("copy", slot._copy_into)  # type: ignore[method-assign]
    slot_module.apply_rows = phases.wrap("copy", slot_module.apply_rows)
    source = SnapshotSubscriber(
        kafka=KafkaConnection(bootstrap),
        topic=topic,
        settings_hash=HASH,
        max_snapshot_bytes=8 * 1024**3,
        max_chunks=65536,
    )
    original = source._start_scan

    def timed_start(timeout_s: float) -> Any:
        scan = original(timeout_s)
        until_base = scan.until_base if scan is not None else None

        def timed_until_base(wanted: Any) -> Any:
            found = until_base(wanted)  # type: ignore[misc]
            phases.mark("scanned")
            return found

        if scan is not None:
            scan.until_base = timed_until_base
        return scan

    source._start_scan = timed_start  # type: ignore[method-assign]
    load = slot.load

    def timed_load(*args: Any, **kwargs: Any) -> Any:
        result = load(*args, **kwargs)
        phases.mark("ready")
        return result

    slot.load = timed_load  # type: ignore[method-assign]
    started = time.perf_counter()
    watcher = SnapshotWatcher(source, slot, poll_timeout_s=0.05).start()
    while not slot.ready:
        time.sleep(0.002)
    ready = time.perf_counter() - started
    watcher.stop()
    scanned = phases.marks["scanned"][0] - started
    read = phases.spans.get("read", [0.0] * 3)[0] + phases.spans.get("verify", [0.0] * 3)[0]
    _, hwm = status_bytes(os.getpid())
    out.put(
        {
            "ready": ready,
            "scan": scanned,
            "base read": read,  # as bench/delta.py's: the chunks read and verified
            "after read": ready - scanned - read,
            "spans": phases.spans,
            "streamed": SERVER_REGISTRY.get_sample_value("streamtrain_serve_streamed_loads_total"),
            "hwm": hwm,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table-gb", type=float, default=1.024)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--streamed", choices=["on", "off", "both"], default="both")
    args = parser.parse_args()
    rows = int(args.table_gb * 1e9 / (DIM * 4))
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.streamed]
    ctx = mp.get_context("spawn")
    with EmbeddedBroker() as broker:
        topic = "bench-replica-load"
        broker.create_topics([topic], 2)
        model = _model(rows, draws=True)
        model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        writer = SnapshotWriter(
            kafka=KafkaConnection(broker.bootstrap_servers),
            topic=topic,
            model_name="bench",
            settings_hash=HASH,
            chunk_bytes=512 * 1024,
        )
        tensors = {n: t.detach().clone() for n, t in model.state_dict().items()}
        del model
        writer.write(
            SnapshotRequest(
                version=1,
                run_id="bench",
                tensors=tensors,
                data_watermark=None,
                offsets={},
                created_at=time.time(),
            )
        )
        writer.close(30)
        del tensors
        print(f"base of {model_bytes / 1e9:.3f} GB written; load {os.getloadavg()[0]:.1f}")
        rows_out: dict[bool, list[dict[str, Any]]] = {m: [] for m in modes}
        for run in range(args.runs):
            for mode in modes if run % 2 == 0 else modes[::-1]:  # both orders, alternately
                out = ctx.Queue()
                proc = ctx.Process(
                    target=_replica, args=(broker.bootstrap_servers, topic, rows, mode, out)
                )
                proc.start()
                row = out.get(timeout=900)
                proc.join(60)
                rows_out[mode].append(row)
                spans = "  ".join(
                    f"{k} {v[0]:.2f}s/{v[1]:.2f}cpu/{int(v[2])}flt"
                    for k, v in sorted(row["spans"].items())
                )
                print(
                    f"streamed={'on' if mode else 'off'} ready {row['ready']:.2f}s "
                    f"scan {row['scan']:.2f}s after-read {row['after read']:.2f}s "
                    f"(ready ÷ base read {row['ready'] / row['base read']:.2f}) "
                    f"streamed loads {row['streamed']}  {spans}  "
                    f"VmHWM {row['hwm'] / 1e9:.2f} GB  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        for mode, got in rows_out.items():
            ratios = [r["ready"] / r["base read"] for r in got]
            print(
                f"streamed={'on' if mode else 'off'}: ready ÷ read median "
                f"{statistics.median(ratios):.2f} (each: {', '.join(f'{x:.2f}' for x in ratios)})"
            )


if __name__ == "__main__":
    main()
