"""The server's local snapshot cache: start serving while Kafka is unreachable.

Every snapshot a server makes live is also written to ``serve.cache_dir``, exactly as it was
published (manifest record value, signature header, payload), so that on load it is checked
the same way a snapshot read from the topic is: signature, schema, configuration, limits,
size and sha256, safetensors decode. A tampered or truncated file is refused, never served.

Layout: one directory per snapshot, ``v<version, 20 digits>-<sha256 prefix>/`` holding
``manifest.json``, ``signature`` (absent when unsigned) and ``payload.safetensors``.

Invariants, in the order writing relies on them:

1. An entry is written under a unique ``.tmp-*`` name, each file fsync-ed, then renamed into
   place in one step and the directory fsync-ed: a reader sees a whole entry or none, even
   after a crash or with several servers sharing the directory.
2. After each write, only the ``keep`` newest entries (by ``snapshot_order``) stay, and the
   entry of the pinned version (``pin.json``, written by ``serve/weights/retained.py``), so a server
   restarted while pinned finds its pinned weights here.
3. Files are size-checked before they are read: memory follows the limits, not the files.

Example:
    >>> cache = SnapshotCache(Path("/var/cache/st"), settings_hash=digest)  # doctest: +SKIP
    >>> cache.store(received)  # doctest: +SKIP
    >>> first = next(cache.newest_first(), None)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec

from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.signing import ManifestVerifier
from streamtrain.snapshot.verify import (
    ReceivedSnapshot,
    RejectedSnapshot,
    screen_manifest,
    verify_file,
)

log = logging.getLogger(__name__)


class _Pin(msgspec.Struct):
    version: int


_PIN_DECODER = msgspec.json.Decoder(_Pin)

_MANIFEST = "manifest.json"
_SIGNATURE = "signature"
_PAYLOAD = "payload.safetensors"
_MAX_MANIFEST_BYTES = 1024 * 1024  # a manifest record is far smaller than one Kafka record
_TMP_PREFIX = ".tmp-"
_PIN = "pin.json"
_ABANDONED_TMP_S = 3600.0  # a temporary entry this old belongs to a writer that died


class SnapshotCache:
    """Verified snapshots on local disk, newest ``keep`` only."""

    def __init__(
        self,
        directory: Path,
        *,
        settings_hash: str,
        keep: int = 2,
        max_snapshot_bytes: int = 2 * 1024**3,
        verifier: ManifestVerifier | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"the snapshot cache must keep at least 1 snapshot, got {keep}")
        self.directory = directory
        self.settings_hash = settings_hash
        self.keep = keep
        self.max_snapshot_bytes = max_snapshot_bytes
        self.verifier = verifier

    # --- writing ---------------------------------------------------------------------------

    def store(self, snapshot: ReceivedSnapshot) -> Path | None:
        """Write ``snapshot`` (invariants 1-2); None when it lacks the bytes to re-verify."""
        if snapshot.payload is None or not snapshot.raw_manifest:
            return None
        manifest = snapshot.manifest
        final = self.directory / f"v{manifest.version:020d}-{manifest.sha256[:16]}"
        if final.exists():
            return final
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            _write(tmp / _MANIFEST, snapshot.raw_manifest)
            if snapshot.signature is not None:
                _write(tmp / _SIGNATURE, snapshot.signature.encode())
            snapshot.payload.copy_to(tmp / _PAYLOAD)  # from the spooled file, never in memory
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.exists():  # not a concurrent writer of the same entry
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(self.directory)
        self._prune()
        return final

    def _prune(self) -> None:
        ranked = sorted(self._entries(), key=lambda e: e[1].order, reverse=True)
        pinned = self.read_pin()
        for path, manifest in ranked[self.keep :]:
            if manifest.version != pinned:
                shutil.rmtree(path, ignore_errors=True)
        now = time.time()
        for tmp in self.directory.glob(f"{_TMP_PREFIX}*"):
            try:
                if now - tmp.stat().st_mtime > _ABANDONED_TMP_S:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                continue  # removed meanwhile by another server

    # --- the operator's pin ------------------------------------------------------------------

    def read_pin(self) -> int | None:
        """The pinned version recorded beside the cache, or None (also for an unreadable file,
        which is logged: serving the newest is the safe default)."""
        raw = _read_bounded(self.directory / _PIN, 1024)
        if raw is None:
            return None
        try:
            return _PIN_DECODER.decode(raw).version
        except msgspec.DecodeError as exc:
            log.warning("ignoring unreadable pin file %s: %s", self.directory / _PIN, exc)
            return None

    def write_pin(self, version: int | None) -> None:
        """Record (or with None remove) the pinned version; atomic like a cache entry."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / _PIN
        if version is None:
            path.unlink(missing_ok=True)
        else:
            tmp = self.directory / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            _write(tmp, msgspec.json.encode(_Pin(version)))
            os.replace(tmp, path)
        _fsync_dir(self.directory)

    # --- reading ---------------------------------------------------------------------------

    def newest_first(self) -> Iterator[ReceivedSnapshot | RejectedSnapshot]:
        """Cached snapshots, newest first, each fully verified or rejected with the reason."""
        if not self.directory.is_dir():
            return
        for path, _ in sorted(self._entries(), key=lambda e: e[1].order, reverse=True):
            yield self._load(path)

    def _entries(self) -> list[tuple[Path, SnapshotManifest]]:
        """Entries whose manifest parses (for ordering only; trust comes from ``_load``)."""
        entries = []
        for path in self.directory.glob("v*"):
            raw = _read_bounded(path / _MANIFEST, _MAX_MANIFEST_BYTES)
            if raw is None:
                continue
            try:
                entries.append((path, SnapshotManifest.model_validate_json(raw)))
            except ValueError:
                continue  # _load reports it when it is offered; pruning ignores it
        return entries

    def _load(self, path: Path) -> ReceivedSnapshot | RejectedSnapshot:
        raw = _read_bounded(path / _MANIFEST, _MAX_MANIFEST_BYTES)
        if raw is None:
            return RejectedSnapshot(
                "bad_manifest", f"cached {path.name}: manifest unreadable", None
            )
        signature_bytes = _read_bounded(path / _SIGNATURE, 1024)
        signature = signature_bytes.decode(errors="replace") if signature_bytes else None
        try:
            snapshot_id = SnapshotManifest.model_validate_json(raw).snapshot_id
        except ValueError:
            snapshot_id = path.name
        manifest = screen_manifest(
            raw,
            snapshot_id,
            signature,
            settings_hash=self.settings_hash,
            max_snapshot_bytes=self.max_snapshot_bytes,
            verifier=self.verifier,
        )
        if isinstance(manifest, RejectedSnapshot):
            return _cached(manifest)
        try:
            # Memory-mapped, never read whole (mapped.py); the size is checked before anything
            # else reads it (verify_file), so a file larger than announced is not read at all.
            with (path / _PAYLOAD).open("rb") as payload:
                result = verify_file(manifest, payload)
        except OSError:
            result = RejectedSnapshot(
                "size", f"snapshot {snapshot_id}: payload missing", manifest.version
            )
        if isinstance(result, RejectedSnapshot):
            return _cached(result)
        return ReceivedSnapshot(result.manifest, result.tensors, result.payload, raw, signature)


def _cached(rejected: RejectedSnapshot) -> RejectedSnapshot:
    return RejectedSnapshot(rejected.reason, f"local cache: {rejected.detail}", rejected.version)


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None if it is missing or longer than ``limit``."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


def _write(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
