"""Chunks gathered while tailing the topic, bounded in count, bytes and age.

Example:
    >>> assembler = Assembler(max_bytes=1024)
    >>> assembler.add("run/1", Chunk(0, 2, b"ab"), offset=10)
    []
    >>> sorted(assembler.take("run/1"))
    [0]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streamtrain.snapshot.manifest import parse_snapshot_id
from streamtrain.snapshot.verify import MAX_CHUNKS, Chunk, RejectedSnapshot


@dataclass
class _Assembly:
    run_id: str
    version: int | None
    chunks: dict[int, Chunk] = field(default_factory=dict)
    nbytes: int = 0
    last_offset: int = -1
    last_seen: float = 0.0


class Assembler:
    """In-progress snapshots keyed by snapshot id, at most one per id.

    An assembly ends in one of these ways:

    1. its manifest arrives: :meth:`take` hands over the chunks for verification;
    2. a chunk of a newer version from the same run arrives: the publisher writes one snapshot
       at a time, so the older one will never complete ("incomplete");
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
    ) -> None:
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.max_chunks = max_chunks
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._open: dict[str, _Assembly] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, snapshot_id: str, chunk: Chunk, offset: int) -> list[RejectedSnapshot]:
        """Keep ``chunk``; return rejections of assemblies this chunk proves dead."""
        parsed = parse_snapshot_id(snapshot_id)
        run_id, version = parsed if parsed else (snapshot_id, None)
        rejected = self._abandon_older(run_id, version)
        assembly = self._open.get(snapshot_id)
        if assembly is None or chunk.index == 0:
            # Chunk 0 again means the same snapshot is being written anew: start over.
            assembly = self._open[snapshot_id] = _Assembly(run_id, version)
        previous = assembly.chunks.get(chunk.index)
        assembly.nbytes += len(chunk.data) - (len(previous.data) if previous else 0)
        assembly.chunks[chunk.index] = chunk
        assembly.last_offset = offset
        assembly.last_seen = self._clock()
        if assembly.nbytes > self.max_bytes or len(assembly.chunks) > self.max_chunks:
            del self._open[snapshot_id]
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

    def take(self, snapshot_id: str) -> dict[int, Chunk]:
        """Remove and return the chunks gathered for ``snapshot_id`` (empty if none)."""
        assembly = self._open.pop(snapshot_id, None)
        return assembly.chunks if assembly else {}

    def expire(self, caught_up: bool) -> list[RejectedSnapshot]:
        """Drop assemblies not fed for ``stale_after_s``; only judged while caught up, since a
        lagging reader has simply not read the rest yet."""
        if not caught_up:
            return []
        now = self._clock()
        stale = [sid for sid, a in self._open.items() if now - a.last_seen > self.stale_after_s]
        return [self._drop(sid, f"no chunk for {self.stale_after_s:.0f} s") for sid in stale]

    def _abandon_older(self, run_id: str, version: int | None) -> list[RejectedSnapshot]:
        if version is None:
            return []
        older = [
            sid
            for sid, a in self._open.items()
            if a.run_id == run_id and a.version is not None and a.version < version
        ]
        return [self._drop(sid, "a newer snapshot of the same run started") for sid in older]

    def _drop(self, snapshot_id: str, why: str) -> RejectedSnapshot:
        assembly = self._open.pop(snapshot_id)
        return RejectedSnapshot(
            "incomplete",
            f"snapshot {snapshot_id}: only {len(assembly.chunks)} chunks arrived and no manifest "
            f"({why}); the publisher stopped mid-way",
            assembly.version,
        )
