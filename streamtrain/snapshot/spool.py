"""A snapshot's chunks written to a file as they arrive, never held together in memory.

A base of 1 GB arrives as ~2000 chunks before its manifest (the manifest is written last).
Holding them, then joining them into one payload, then decoding it held the model three
times over; a :class:`Spool` instead writes each chunk at its place in an unlinked temporary
file (``index x chunk length``, so chunks may arrive in any order) and keeps only what it
needs to judge them: each chunk's count, length and whether its own sha256 (header
``streamtrain-chunk-sha256``) matched, and the whole payload's sha256 while the chunks come
in order (:meth:`Spool.sha256`). When the manifest comes, :meth:`Spool.verify` runs
the checks of ``verify.py`` (4 to 8) on the file, reading it in blocks, and hands back a
:class:`~streamtrain.snapshot.mapped.MappedPayload`: the verified file memory-mapped, its
tensors views of the mapping. Memory follows one chunk (and one verification block) at a
time; the bytes live in the page cache, which the kernel may write out and drop.

Example:
    >>> spool = Spool(max_bytes=16)
    >>> spool.add(Chunk(1, 2, b"cd"))
    >>> spool.add(Chunk(0, 2, b"ab"))
    >>> spool.read_all()
    b'abcd'
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

_BLOCK = 1024 * 1024  # bytes hashed per read: bounded memory whatever the snapshot size
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_CHUNK_BUFFER_BYTES = 128 * 1024


def return_chunk_buffers() -> None:
    """Make glibc hand every freed chunk buffer back to the OS at once.

    A 512 KiB chunk lives for one ``add``; glibc serves blocks that large with their own
    mapping, but after the first is freed it raises that threshold (up to 32 MiB) and later
    ones come from the heap, which keeps what a burst of chunks grew it by: measured, a
    64 MiB base load raised the server's peak RSS by twice the model. Fixing the threshold
    at 128 KiB (glibc's default) stops that adaptation for this process; a no-op elsewhere.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _CHUNK_BUFFER_BYTES)


Reason = Literal["size", "corrupt", "incomplete", "checksum"]


class SpoolError(ValueError):
    """Why spooled chunks cannot make the snapshot: ``reason`` is the rejection reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ChunkFill(Protocol):
    """Where a spool also hands each chunk whose own sha256 matched, as it is placed: a new
    replica's standby tensors (``serve/weights/standby_fill.py``), written while the rest of
    the base is still being read. What it wrote is made live only after the whole payload
    was verified (its sha256 in the signed manifest) and the fill says it is ``complete``."""

    def write(self, index: int, data: bytes) -> None: ...

    def abandon(self, why: str) -> None: ...

    @property
    def complete(self) -> bool: ...


@dataclass(frozen=True)
class Chunk:
    """One chunk as received: its index and the chunk count its header announced."""

    index: int
    count: int
    data: bytes


@dataclass(frozen=True)
class _Placed:
    count: int
    length: int
    digest_ok: bool  # the chunk's own sha256 header matched (True when it had none)


class Spool:
    """Chunks of one snapshot in an unlinked temporary file under ``directory``.

    Invariants:

    1. All chunks but the last have one length ``L`` (the publisher's ``chunk_bytes``); chunk
       ``i`` is written at ``i * L``. ``L`` is learnt from the first chunk that is not the
       last of its count; a last chunk arriving before it waits in memory (one chunk at most).
    2. No byte is written past ``max_bytes``: a chunk that would end there is refused
       (``size``), so a header announcing a huge index cannot grow a sparse file.
    3. A chunk of another count than the first, or a second "last" chunk, is refused
       (``corrupt``); chunk ``i`` arriving again replaces the first copy.
    """

    def __init__(self, *, max_bytes: int, directory: Path | None = None) -> None:
        self.max_bytes = max_bytes
        self._file: BinaryIO = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (owned)
        self._placed: dict[int, _Placed] = {}
        self._stride: int | None = None  # L
        self._waiting: tuple[int, int, bytes, bool] | None = None  # a last chunk before L
        self._count: int | None = None
        self.problem: SpoolError | None = None  # the first chunk refused, reported at verify
        self.overflow = False  # a chunk would have ended past max_bytes
        self.nbytes = 0
        # The payload's sha256 as chunks arrive, while each is in memory: valid only while
        # chunks come in index order, each once (the publisher's order), which makes the
        # bytes hashed the file's bytes; otherwise None and :meth:`sha256` reads the file.
        self._running: hashlib._Hash | None = hashlib.sha256()
        self._hashed = 0  # chunks folded into ``_running``: 0..N-1 in order
        self.fill: ChunkFill | None = None  # also gets each placed chunk (a new replica's load)

    def __len__(self) -> int:
        return len(self._placed) + (self._waiting is not None)

    @property
    def file(self) -> BinaryIO:
        return self._file

    def add(self, chunk: Chunk, sha256: str | None = None) -> None:
        """Place one chunk; a refusal is kept in ``problem`` and reported by :meth:`check`."""
        index, count, data = chunk.index, chunk.count, chunk.data
        digest_ok = sha256 is None or hashlib.sha256(data).hexdigest() == sha256
        if self._count is None:
            self._count = count
        if count != self._count:
            self._refuse("corrupt", f"chunk {index}/{count} does not fit the {self._count} chunks")
            return
        if index == count - 1 and count > 1 and self._stride is None:
            self._waiting = (index, count, bytes(data), digest_ok)
            return
        if self._stride is None:
            self._stride = len(data)
        self._write(index, count, data, digest_ok)
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            self._write(waiting[0], waiting[1], waiting[2], waiting[3])

    def _write(self, index: int, count: int, data: bytes, digest_ok: bool) -> None:
        stride = self._stride or 0
        if index < count - 1 and len(data) != stride:
            self._refuse("size", f"chunk {index} is {len(data)} bytes, its siblings {stride}")
            return
        at = index * stride
        if at + len(data) > self.max_bytes:
            self.overflow = True
            self._refuse("size", f"chunk {index} would end past {self.max_bytes} bytes")
            return
        previous = self._placed.get(index)
        self.nbytes += len(data) - (previous.length if previous else 0)
        os.pwrite(self._file.fileno(), data, at)
        if self._running is not None and index == self._hashed and previous is None:
            self._running.update(data)  # releases the GIL, like the chunk's own digest
            self._hashed += 1
        else:
            self._running = None
        self._placed[index] = _Placed(count, len(data), digest_ok)
        if self.fill is not None:
            if not digest_ok:
                self.fill.abandon(f"chunk {index} differs from its own sha256")
            else:
                try:
                    self.fill.write(index, data)
                except Exception as exc:
                    # The fill only saves the copy after the read; whatever it trips on
                    # (the bytes are the topic's) must not end the read, which the reader
                    # would take for an outage: the snapshot is verified and loaded as before.
                    self.fill.abandon(f"chunk {index} could not be placed: {exc!r}"[:400])

    def _refuse(self, reason: Reason, message: str) -> None:
        if self.fill is not None:
            self.fill.abandon(message)
        if self.problem is None:
            self.problem = SpoolError(reason, message)

    def indices(self) -> set[int]:
        held = set(self._placed)
        if self._waiting is not None:
            held.add(self._waiting[0])
        return held

    def complete(self, count: int) -> bool:
        """Whether every index below ``count`` has arrived."""
        if len(self) < count:
            return False
        held = self.indices()
        return all(i in held for i in range(count))

    def check(self, count: int, chunk_bytes: int, size_bytes: int) -> SpoolError | None:
        """Checks 4-6 of ``verify.py`` and each chunk's own digest, in that order."""
        if self._count is not None and self._count != count:
            return SpoolError("corrupt", f"chunks announce {self._count} chunks, not {count}")
        if self.problem is not None:
            return self.problem
        held = self.indices()
        if len(held) < count:
            first = next(i for i in range(len(held) + 1) if i not in held)
            return SpoolError(
                "incomplete",
                f"{count - len(held)} of {count} chunks missing (first: {first}); the "
                "publisher stopped mid-way or retention deleted them",
            )
        if count > 1 and self._stride != chunk_bytes:
            return SpoolError("size", f"chunks are {self._stride} bytes, expected {chunk_bytes}")
        last = size_bytes - (count - 1) * chunk_bytes
        placed = self._placed.get(count - 1)
        if placed is None or placed.length != last:
            got = None if placed is None else placed.length
            return SpoolError("size", f"chunk {count - 1} is {got} bytes, expected {last}")
        bad = sorted(i for i, p in self._placed.items() if not p.digest_ok)
        if bad:
            return SpoolError(
                "checksum",
                f"chunk {bad[0]} (and {len(bad) - 1} more) differs from its own sha256; a chunk "
                "was altered in transit or on the broker",
            )
        return None

    def sha256(self, size: int) -> str:
        """The sha256 of the spooled payload's ``size`` bytes, once :meth:`check` passed:
        the running digest when every chunk came once and in order (no second pass over a
        base: 0.23 s per 0.26 GB here, bench/README.md, Delta snapshots), else the file's."""
        count = len(self._placed)
        if self._running is not None and self._hashed == count and self.nbytes == size:
            return self._running.hexdigest()
        return file_sha256(self._file.fileno(), size)

    def read_all(self) -> bytes:
        """The whole file (small payloads and tests only)."""
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        self._file.close()


def file_sha256(fd: int, size: int) -> str:
    """The sha256 of the first ``size`` bytes of ``fd``, read in blocks (memory: one block)."""
    digest = hashlib.sha256()
    done = 0
    while done < size:
        block = os.pread(fd, min(_BLOCK, size - done), done)
        if not block:
            break
        digest.update(block)
        done += len(block)
    return digest.hexdigest()
