"""The newest snapshot version on the topic, for a trainer that must continue the sequence."""

from __future__ import annotations

import logging
import time

from streamtrain.ingest.decode import KafkaRecord
from streamtrain.kafka import KafkaConnection, ReadTimeout, partition_reader
from streamtrain.snapshot import wire
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.verify import parse_manifest

log = logging.getLogger(__name__)

_FIRST_WINDOW = 16  # records; the newest manifest is normally among the last few
_MAX_WINDOW = 4096


class VersionLookupFailed(ConnectionError):
    """The snapshot topic could not be read to find the newest version: starting anyway could
    publish a version another run already holds, so the trainer does not start."""


def newest_version(
    kafka: KafkaConnection, topic: str, settings_hash: str, timeout_s: float = 30.0
) -> int:
    """The highest version among the newest manifests of this configuration on ``topic``.

    Reads manifests only (no chunks): a new run must number its snapshots above every
    version servers may hold, whether or not that snapshot verifies. Scans backwards in
    growing windows and stops at the first window holding a manifest of ``settings_hash``;
    0 when there is none or the topic does not exist. Keyed by the settings hash because
    servers only take snapshots of their own hash: another model's versions on a shared
    topic are not a sequence this run continues. Raises :class:`VersionLookupFailed` when the
    broker does not answer in time (0 there would let a run reuse a version).
    """
    deadline = time.monotonic() + timeout_s
    reader = partition_reader(kafka, topic=topic)
    try:
        if not reader.exists():
            return 0
        low, end = reader.bounds(deadline)
        window = _FIRST_WINDOW
        while end > low:
            start = max(low, end - window)
            versions = [
                manifest.version
                for record in reader.read(start, end, deadline)
                if (manifest := _manifest(record)) is not None
                and manifest.settings_hash == settings_hash
            ]
            if versions:
                return max(versions)
            end, window = start, min(window * 2, _MAX_WINDOW)
    except (ReadTimeout, ConnectionError) as exc:
        raise VersionLookupFailed(
            f"cannot read the snapshot topic {topic} within {timeout_s:.0f} s to find the "
            f"newest published version ({exc}); the trainer does not start rather than risk "
            "publishing a version another run already holds"
        ) from exc
    finally:
        reader.close()
    return 0


def _manifest(record: KafkaRecord) -> SnapshotManifest | None:
    header = wire.parse_headers(record.headers)
    if header is None or header.kind != "manifest":
        return None
    manifest = parse_manifest(bytes(record.value or b""), header.snapshot_id)
    return manifest if isinstance(manifest, SnapshotManifest) else None
