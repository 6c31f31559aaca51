"""Chunks gathered while tailing the topic, bounded in count, bytes and age.

Example:
    >>> assembler = Assembler(max_bytes=1024)
    >>> assembler.add("run/1", Chunk(0, 2, b"ab"), offset=10)
    []
    >>> sorted(assembler.take("run/1").indices())
    [0]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamtrain.snapshot.manifest import parse_snapshot_id
from streamtrain.snapshot.spool import Chunk, Spool
from streamtrain.snapshot.verify import MAX_CHUNKS, RejectedSnapshot


@dataclass
class _Assembly:
    run_id: str
    version: int | None
    lane: str  # wire.LANE: the publisher writes one snapshot at a time per lane
    chunks: Spool  # on disk as they arrive (spool.py): memory is one chunk, not the snapshot
    last_offset: int = -1
    last_seen: float = 0.0


class Assembler:
    """In-progress snapshots keyed by snapshot id, at most one per id.

    An assembly ends in one of these ways:

    1. its manifest arrives: :meth:`take` hands over the chunks for verification;
    2. a chunk of a newer version from the same run and lane arrives: the publisher writes one
       snapshot at a time per lane (deltas beside one base, ``publisher.py``), so the older
       one will never complete ("incomplete");
    3. its chunks pass ``max_bytes`` or ``max_chunks`` ("size": memory follows the chunks that
       arrived, whatever count their headers announce), or more than ``max_pending`` are open
       (the one least recently fed is dropped, "incomplete");
    4. no chunk arrived for ``stale_after_s`` while the reader was caught up ("incomplete").
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        max_pending: int = 4,
        max_chunks: int = MAX_CHUNKS,
        stale_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        spool_dir: Path | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.spool_dir = spool_dir
        self.max_pending = max_pending
        self.max_chunks = max_chunks
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._open: dict[str, _Assembly] = {}

    def __len__(self) -> int:
        return len(self._open)

    def new_spool(self) -> Spool:
        return Spool(max_bytes=self.max_bytes, directory=self.spool_dir)

    def add(
        self,
        snapshot_id: str,
        chunk: Chunk,
        offset: int,
        sha256: str | None = None,
        lane: str = "",
    ) -> list[RejectedSnapshot]:
        """Keep ``chunk`` (its own digest ``sha256`` checked); return rejections of assemblies
        this chunk proves dead."""
        parsed = parse_snapshot_id(snapshot_id)
        run_id, version = parsed if parsed else (snapshot_id, None)
        rejected = self._abandon_older(run_id, version, lane)
        assembly = self._open.get(snapshot_id)
        if assembly is None or chunk.index == 0:
            # Chunk 0 again means the same snapshot is being written anew: start over.
            if assembly is not None:
                assembly.chunks.close()
            assembly = self._open[snapshot_id] = _Assembly(run_id, version, lane, self.new_spool())
        assembly.chunks.add(chunk, sha256)
        assembly.last_offset = offset
        assembly.last_seen = self._clock()
        spool = assembly.chunks
        if spool.overflow or spool.nbytes > self.max_bytes or len(spool) > self.max_chunks:
            del self._open[snapshot_id]
            spool.close()
            rejected.append(
                RejectedSnapshot(
                    "size",
                    f"snapshot {snapshot_id}: chunks received so far exceed max_snapshot_bytes "
                    f"({self.max_bytes}) or {self.max_chunks} chunks; raise the byte limit if "
                    "the model really is that large",
                    version,
                )
            )
        if len(self._open) > self.max_pending:
            oldest = min(self._open, key=lambda sid: self._open[sid].last_offset)
            rejected.append(self._drop(oldest, f"more than {self.max_pending} snapshots open"))
        return rejected

    def take(self, snapshot_id: str) -> Spool:
        """Remove and return the chunks gathered for ``snapshot_id`` (a new, empty spool if
        none); the caller closes it."""
        assembly = self._open.pop(snapshot_id, None)
        return assembly.chunks if assembly else self.new_spool()

    def expire(self, caught_up: bool) -> list[RejectedSnapshot]:
        """Drop assemblies not fed for ``stale_after_s``; only judged while caught up, since a
        lagging reader has simply not read the rest yet."""
        if not caught_up:
            return []
        now = self._clock()
        stale = [sid for sid, a in self._open.items() if now - a.last_seen > self.stale_after_s]
        return [self._drop(sid, f"no chunk for {self.stale_after_s:.0f} s") for sid in stale]

    def open_ids(self) -> list[str]:
        """The ids of the snapshots still being assembled."""
        return list(self._open)

    def discard(self, snapshot_id: str) -> None:
        """Forget ``snapshot_id``'s chunks without a rejection: the reader will not load it
        (a base the live weights already cover, ``subscriber.py``)."""
        assembly = self._open.pop(snapshot_id, None)
        if assembly is not None:
            assembly.chunks.close()

    def _abandon_older(self, run_id: str, version: int | None, lane: str) -> list[RejectedSnapshot]:
        if version is None:
            return []
        older = [
            sid
            for sid, a in self._open.items()
            if a.run_id == run_id
            and a.lane == lane
            and a.version is not None
            and a.version < version
        ]
        return [self._drop(sid, "a newer snapshot of the same run started") for sid in older]

    def _drop(self, snapshot_id: str, why: str) -> RejectedSnapshot:
        assembly = self._open.pop(snapshot_id)
        assembly.chunks.close()
        return RejectedSnapshot(
            "incomplete",
            f"snapshot {snapshot_id}: only {len(assembly.chunks)} chunks arrived and no manifest "
            f"({why}); the publisher stopped mid-way",
            assembly.version,
        )
