"""What a server holds while it loads a dynamic table's base: VmHWM per phase of the slot's load.

Run: ``PYTHONPATH=. python bench/dynamic_load_memory.py [--table-gb 1.0]`` (under the bench lock:
it holds the table about twice, in two processes one after the other).

A first process builds ``bench/delta_dynamic.py``'s trainer model (every row owned, as in
``bench/delta.py --modes dynamic``) and writes its state as a safetensors file; this process
then builds the server's model and ``WeightSlot`` (the table and the mapping shared by both
copies, as ``bench/delta.py``'s server) and loads that file twice, memory-mapped as the
subscriber does (``snapshot/mapped.py``). Before each phase of ``WeightSlot.load`` the kernel's
high-water mark is reset (``/proc/self/clear_refs``), so each line says how far RSS rose above
where it stood: ``check_whole``, ``check_mappings`` (no ID owning two rows), the dense copy,
``apply_rows`` (the shared table and mapping, block by block), ``refresh_lookups`` (the ID
lookup rebuilt; the old one dropped first). Last, the lookup's compaction (what a delta
triggers once per ``recent_bound(capacity)`` admissions, about ``16 * sqrt(capacity)``) in
place, as a server's delta runs it, then copying, as the trainer's step. glibc's mapping threshold
is fixed as the subscriber fixes it (``spool.return_chunk_buffers``). Kafka, the spool and
the watcher are left out (``bench/delta.py`` has them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import delta_dynamic
from delta_procs import status_bytes

DIM, DENSE = 64, 8
_PEAKS: list[int] = []  # VmHWM at the end of each phase of a load


def _rss() -> tuple[int, int]:
    return status_bytes(os.getpid())


def _write(rows: int, path: Path) -> None:
    from streamtrain.snapshot.payload import encode_parts

    payload, _ = encode_parts(delta_dynamic.build(rows, DIM, DENSE, fill=True).state_dict())
    with path.open("wb") as out:
        for part in payload.parts:
            out.write(part)


def _phase(name: str, fn: Callable[..., Any], runtime: int) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        before, _ = _rss()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds = time.perf_counter() - started
        after, peak = _rss()
        _PEAKS.append(peak)
        print(
            f"  {name}: {seconds:.3f} s, from {(before - runtime) / 1e6:.0f} MB over the "
            f"runtime: peak +{(peak - before) / 1e6:.0f} MB, after +{(after - before) / 1e6:.0f} MB"
        )
        return out

    return timed


def _load(rows: int, path: Path) -> None:
    from streamtrain.serve.weights import slot as slot_module
    from streamtrain.snapshot.manifest import SnapshotHeader
    from streamtrain.snapshot.mapped import MappedPayload
    from streamtrain.snapshot.spool import return_chunk_buffers
    from streamtrain.train.models import dynamic_mappings
    from streamtrain.train.row_tracker import row_sparse_buffers, row_sparse_parameters

    torch.set_num_threads(1)
    return_chunk_buffers()  # as the server's subscriber: large arrays mapped and unmapped
    runtime, _ = _rss()
    model = delta_dynamic.build(rows, DIM, DENSE, fill=False)
    shared = frozenset(row_sparse_parameters(model)) | frozenset(row_sparse_buffers(model))
    slot = slot_module.WeightSlot(model, shared=shared)
    built, _ = _rss()
    table = rows * DIM * 4
    print(f"runtime {runtime / 1e9:.3f} GB; model built: +{(built - runtime) / 1e9:.3f} GB")
    for name in ("check_whole", "check_mappings", "apply_rows"):
        setattr(slot_module, name, _phase(name, getattr(slot_module, name), runtime))
    dynamic_mappings.refresh_lookups = _phase(  # type: ignore[assignment]
        "refresh_lookups", dynamic_mappings.refresh_lookups, runtime
    )
    for version in (1, 2):
        with path.open("rb") as file:
            mapped = MappedPayload(file, os.path.getsize(path))
            Path("/proc/self/clear_refs").write_text("5")
            _PEAKS.clear()
            slot.load(mapped.tensors, SnapshotHeader(version, "r"))
            after, peak = _rss()
            peak = max(peak, *_PEAKS)  # each phase reset the high-water mark
            del mapped
        print(
            f"base {version}: peak {(peak - runtime) / table:.3f} x table over the runtime "
            f"(+{(peak - built) / 1e9:.3f} GB over the model as built), after "
            f"{(after - runtime) / table:.3f} x"
        )
    _compaction(model, table)


def _compaction(model: torch.nn.Module, table: int) -> None:
    """Compactions of the served lookup, as a delta triggers them (the mapping written with
    ``index_copy_``, then ``DynamicMapping.refresh``): one more new ID than the recent level
    holds (``recent_bound``; at 1 GB about 1% of the rows), twice: in place, as the server
    compacts, and copying (``replace`` without ``in_place``, the trainer's compaction)."""
    from streamtrain.train.models.dynamic_lookup import recent_bound, token
    from streamtrain.train.models.dynamic_mappings import dynamic_mappings

    mapping = next(iter(dynamic_mappings(model).values()))
    rng = np.random.default_rng(0)
    for round_, how in enumerate(("in place", "copying")):
        lookup = mapping.lookup()
        count = recent_bound(mapping.capacity) + 1
        rows = torch.from_numpy(np.sort(rng.choice(mapping.capacity, count, False)))
        start = 10**15 + round_ * count
        came = torch.arange(start, start + count, dtype=torch.int64)
        before = mapping.slot_ids[rows].clone()
        with torch.no_grad():
            mapping.slot_ids.index_copy_(0, rows, came)
        rss, _ = _rss()
        Path("/proc/self/clear_refs").write_text("5")
        started = time.perf_counter()
        if how == "in place":
            mapping.refresh(rows, before)
            compacted = mapping.lookup()
        else:
            made_from = token(mapping.slot_ids)
            compacted = lookup.replace(came.numpy(), rows.numpy(), lookup.owned, made_from)
        seconds = time.perf_counter() - started
        _, peak = _rss()
        assert compacted.new_keys.size == 0, "the recent level was not compacted"
        hit, found = compacted.find(came.numpy())
        assert hit.all() and np.array_equal(found, rows.numpy()), "a compaction lost a pair"
        rise = (peak - rss) / table
        print(f"lookup compaction, {how}: {seconds:.3f} s, peak +{rise:.3f} x table")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table-gb", type=float, default=1.0, help="the table's fp32 bytes")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # the first process
    args = parser.parse_args()
    rows = max(2, int(args.table_gb * 1e9 / (DIM * 4)))
    if args.write is not None:
        _write(rows, args.write)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "base.safetensors"
        command = [sys.executable, __file__, "--table-gb", str(args.table_gb), "--write", path]
        subprocess.run([str(c) for c in command], check=True)
        _load(rows, path)


if __name__ == "__main__":
    main()
