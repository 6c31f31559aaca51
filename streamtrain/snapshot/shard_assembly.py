"""A server's version made of every rank's shard of one step (docs/snapshots.md, Sharded tables).

A trainer with ``row_wise`` tables publishes one snapshot per rank and step
(``distributed/shard_snapshot.py``): shard ``r`` of ``n`` holds rank r's rows of each
row-wise table (``ShardInfo.tables``) at their *local* index ``g // n``; shard 0 also holds
every other tensor whole. Each shard is an ordinary snapshot on the wire, verified on its own
by the subscriber (signature, sha256, tensors), under its own id (``shard_snapshot_id``).

Rules:

1. Shards are grouped by step: run, version, trainer clock and world size, all of which the
   ranks agreed on before publishing. A step becomes one snapshot only once every shard of it
   has arrived and verified; a shard that is missing, forged or corrupt (refused by the
   subscriber, so never offered here) leaves its step incomplete and the live version serving.
2. The shards of a step must agree on kind, base and predecessor (each rank's publisher keeps
   its own chain; a publish that failed on one rank only makes the shards disagree) and on
   the tables; otherwise the step is refused (``bad_manifest``), never served in part. The
   server then waits for the next base, as after any gap.
3. Assembly maps each shard's rows to global ones (``g = local * n + r``): a base interleaves
   the shards into whole tables; a delta concatenates their rows. The result is exactly what
   a single trainer holding the whole table would have published, so the slot, the delta
   chain and the catch-up treat it as any other snapshot. It is never written to the local
   cache (no single signed manifest covers it): a restarted server catches up from the topic.
4. At most ``keep_steps`` incomplete steps are held (the newest): an older one can no longer
   be served anyway once a newer version is live.
5. Shards read by a catch-up scan and shards from the tail are held together: a step whose
   first shards the startup scan read while the trainer was still writing the others is
   completed by the tail (a scan that kept them to itself lost that step for good).

Servers still hold whole tables: assembling a base holds the shards' mapped payloads and the
whole table at once (docs/scaling.md, serving memory).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import torch

from streamtrain.snapshot.delta import ROWS_SUFFIX
from streamtrain.snapshot.manifest import SnapshotManifest, TensorInfo
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot
from streamtrain.train.models.row_layout import ShardLayout

log = logging.getLogger(__name__)

Item = ReceivedSnapshot | RejectedSnapshot
_StepKey = tuple[str, int, float, int]  # run_id, version, created_at, world
_AGREE = ("kind", "base_id", "predecessor_id", "model_name", "settings_hash")


class ShardError(ValueError):
    """The shards of one step do not fit together into one snapshot."""


def _key(manifest: SnapshotManifest) -> _StepKey:
    assert manifest.shard is not None
    return (manifest.run_id, manifest.version, manifest.created_at, manifest.shard.world)


class ShardAssembly:
    """Rules 1-4 between the subscriber and the watcher's loading."""

    def __init__(self, keep_steps: int = 8) -> None:
        self._keep_steps = keep_steps
        self._steps: dict[_StepKey, dict[int, ReceivedSnapshot]] = {}
        self._rejected: list[RejectedSnapshot] = []  # met by newest_first, counted next offer

    def offer(self, items: Sequence[Item]) -> list[Item]:
        """``items`` with every shard replaced: held, or its completed step assembled."""
        out: list[Item] = list(self._rejected)
        self._rejected = []
        for item in items:
            if isinstance(item, RejectedSnapshot) or item.manifest.shard is None:
                out.append(item)
                continue
            done = _add(self._steps, item)
            if done is not None:
                out.append(done)
        self._drop_oldest()
        return out

    def _drop_oldest(self) -> None:
        for key in sorted(self._steps, key=lambda k: (k[1], k[2], k[0]))[: -self._keep_steps]:
            log.info("sharded step %s/%d never completed; dropped", key[0], key[1])
            del self._steps[key]

    def newest_first(self, snapshots: Iterable[ReceivedSnapshot]) -> Iterator[ReceivedSnapshot]:
        """A source's newest-first snapshots with shards assembled by step (the shards of one
        step sort together: same version, clock and run). Incomplete steps are held with the
        tail's (rule 5), however far the caller reads."""
        try:
            for item in snapshots:
                if item.manifest.shard is None:
                    yield item
                    continue
                done = _add(self._steps, item)
                if isinstance(done, RejectedSnapshot):
                    self._rejected.append(done)
                elif done is not None:
                    yield done
        finally:
            self._drop_oldest()


def _add(
    steps: dict[_StepKey, dict[int, ReceivedSnapshot]], shard: ReceivedSnapshot
) -> Item | None:
    """Hold ``shard``; its step assembled (or refused) once it is the last one missing."""
    manifest = shard.manifest
    assert manifest.shard is not None
    key = _key(manifest)
    group = steps.setdefault(key, {})
    group[manifest.shard.index] = shard  # the same shard read twice: either copy
    if len(group) < manifest.shard.world:
        return None
    del steps[key]
    try:
        return assemble([group[i] for i in range(manifest.shard.world)])
    except ShardError as exc:
        log.warning("sharded snapshot %s/%d refused: %s", key[0], key[1], exc)
        return RejectedSnapshot(
            "bad_manifest", f"sharded snapshot {key[0]}/{key[1]}: {exc}", key[1]
        )


def assemble(shards: Sequence[ReceivedSnapshot]) -> ReceivedSnapshot:
    """Rules 2-3: the one snapshot ``shards`` (by index, all of one step) make together."""
    first = shards[0].manifest
    assert first.shard is not None
    for shard in shards[1:]:
        m = shard.manifest
        assert m.shard is not None
        for field in _AGREE:
            if getattr(m, field) != getattr(first, field):
                raise ShardError(
                    f"shard {m.shard.index} has {field} {getattr(m, field)!r}, shard 0 "
                    f"{getattr(first, field)!r}"
                )
        if m.shard.tables != first.shard.tables:
            raise ShardError(f"shard {m.shard.index} names other row-wise tables than shard 0")
    tables = first.shard.tables
    parts = [dict(s.tensors) for s in shards]
    for index, tensors in enumerate(parts[1:], start=1):
        stray = sorted(n for n in tensors if n.removesuffix(ROWS_SUFFIX) not in tables)
        if stray:
            raise ShardError(f"shard {index} holds tensors of no row-wise table: {stray[:3]}")
    merged = {n: t for n, t in parts[0].items() if n.removesuffix(ROWS_SUFFIX) not in tables}
    for name, rows in tables.items():
        if first.kind == "base":
            merged[name] = _interleave(name, rows, parts)
        else:
            merged[name + ROWS_SUFFIX], merged[name] = _global_rows(name, rows, parts)
    manifest = first.model_copy(
        update={
            "shard": None,
            "tensors": [
                TensorInfo(name=n, dtype=str(t.dtype).removeprefix("torch."), shape=list(t.shape))
                for n, t in merged.items()
            ],
            "size_bytes": sum(s.manifest.size_bytes for s in shards),
            "offsets": {p: o for s in shards for p, o in s.manifest.offsets.items()},
            "data_watermark": max(
                (s.manifest.data_watermark for s in shards if s.manifest.data_watermark),
                default=first.data_watermark,
            ),
        }
    )
    # shard 0's mapping stays alive with the dense tensors that view it
    return ReceivedSnapshot(manifest, merged, shards[0].payload)


def _local(name: str, rows: int, index: int, world: int, part: torch.Tensor) -> ShardLayout:
    layout = ShardLayout(index, world)
    if part.dim() < 1 or part.shape[0] != layout.local_rows(rows):
        raise ShardError(
            f"shard {index} holds {list(part.shape)} of {name!r}, expected "
            f"{layout.local_rows(rows)} of its {rows} rows"
        )
    return layout


def _interleave(name: str, rows: int, parts: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """A base's whole table: shard r's local row l is global row l * world + r."""
    world = len(parts)
    pieces = [p.get(name) for p in parts]
    if any(p is None for p in pieces):
        raise ShardError(f"a shard lacks row-wise table {name!r}")
    shapes = {(tuple(p.shape[1:]), p.dtype) for p in pieces if p is not None}
    if len(shapes) != 1:
        raise ShardError(f"the shards of {name!r} differ in row shape or dtype")
    ((trailing, dtype),) = shapes
    whole = torch.empty((rows, *trailing), dtype=dtype)
    for index, piece in enumerate(pieces):
        assert piece is not None
        _local(name, rows, index, world, piece)
        whole[index::world] = piece
    return whole


def _global_rows(
    name: str, rows: int, parts: list[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A delta's rows of one table from every shard, as global rows (and their values)."""
    world = len(parts)
    indices, values = [], []
    for index, part in enumerate(parts):
        value, local = part.get(name), part.get(name + ROWS_SUFFIX)
        if value is None:
            raise ShardError(f"shard {index} lacks row-wise table {name!r}")
        layout = ShardLayout(index, world)
        if local is None:  # the shard sent its rows whole
            local = torch.arange(_local(name, rows, index, world, value).local_rows(rows))
        if local.dtype != torch.int64 or local.dim() != 1 or local.shape[0] != value.shape[0]:
            raise ShardError(f"shard {index}: rows of {name!r} do not match its values")
        if local.numel() and (int(local.min()) < 0 or int(local.max()) >= layout.local_rows(rows)):
            raise ShardError(f"shard {index}: rows of {name!r} outside its shard")
        indices.append(local * world + index)
        values.append(value)
    try:
        return torch.cat(indices), torch.cat(values)
    except RuntimeError as exc:  # rows of another shape or dtype
        raise ShardError(f"the shards' rows of {name!r} do not fit together: {exc}") from None
