"""Record keys and headers of the snapshot topic (layout explained in ``docs/snapshots.md``).

Every record names its kind and its snapshot in headers, so a reader classifies a record
without parsing its value:

====================  ===========================  ================================
header                chunk record                 manifest record
====================  ===========================  ================================
streamtrain-kind      ``chunk``                    ``manifest``
streamtrain-snapshot  ``<run_id>/<version>``       ``<run_id>/<version>``
streamtrain-chunk     ``<index>/<count>``          (absent)
streamtrain-model     model name                   model name
streamtrain-signature (absent)                     ``ed25519:<key id>:<base64>``
streamtrain-chunk-    sha256 of the chunk (hex)    (absent)
sha256
streamtrain-lane      ``base`` (base lane only)    ``base`` (base lane only)
====================  ===========================  ================================

The signature header is present when the trainer signs (see ``signing.py``). The lane header
marks the records of a base published beside the deltas (``publisher.py``): a reader keeps
one snapshot in progress per lane and run, so a delta's chunks do not abandon the base still
being written (``assembly.py`` rule 2), and a server whose live weights already passed that
base's version skips it (``subscriber.py``).

Keys are unique per record (``<model>/<run_id>/<version>/chunk/<i>``, ``.../manifest``): with
``cleanup.policy=delete`` keys play no part, and should a topic be compacted by mistake,
unique keys mean compaction removes nothing instead of deleting chunks a manifest needs.

Example:
    >>> headers = chunk_headers("mlp", "run-1/5", 2, 3)
    >>> parsed = parse_headers(headers)
    >>> parsed.kind, parsed.snapshot_id, parsed.index, parsed.count, parsed.lane
    ('chunk', 'run-1/5', 2, 3, '')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from streamtrain.ascii_int import parse_ascii_int

KIND = "streamtrain-kind"
SNAPSHOT = "streamtrain-snapshot"
CHUNK = "streamtrain-chunk"
MODEL = "streamtrain-model"
SIGNATURE = "streamtrain-signature"
CHUNK_SHA256 = "streamtrain-chunk-sha256"
LANE = "streamtrain-lane"
BASE_LANE = "base"
# Partition 0 holds every manifest and every delta's chunks; a base lane base's chunks go to
# BASE_PARTITION, so a server tailing partition 0 never reads a base it does not need
# (docs/snapshots.md, Topic layout). Topics streamtrain creates have SNAPSHOT_PARTITIONS.
BASE_PARTITION = 1
SNAPSHOT_PARTITIONS = 2
_HEX = frozenset("0123456789abcdef")

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class RecordHeader:
    """What a record's headers say it is."""

    kind: Literal["chunk", "manifest"]
    snapshot_id: str
    index: int = 0  # chunk records only
    count: int = 0  # chunk records only
    signature: str | None = None  # manifest records only, when signed
    sha256: str | None = None  # chunk records only: the chunk's own digest (absent from old ones)
    lane: str = ""  # ``base`` from the base lane, "" otherwise


def chunk_key(model_name: str, snapshot_id: str, index: int) -> bytes:
    return f"{model_name}/{snapshot_id}/chunk/{index}".encode()


def manifest_key(model_name: str, snapshot_id: str) -> bytes:
    return f"{model_name}/{snapshot_id}/manifest".encode()


def chunk_headers(
    model_name: str,
    snapshot_id: str,
    index: int,
    count: int,
    sha256: str | None = None,
    lane: str = "",
) -> Headers:
    headers = [
        (KIND, b"chunk"),
        (SNAPSHOT, snapshot_id.encode()),
        (CHUNK, f"{index}/{count}".encode()),
        (MODEL, model_name.encode()),
    ]
    if sha256 is not None:
        headers.append((CHUNK_SHA256, sha256.encode()))
    if lane:
        headers.append((LANE, lane.encode()))
    return headers


def manifest_headers(
    model_name: str, snapshot_id: str, signature: str | None = None, lane: str = ""
) -> Headers:
    headers = [(KIND, b"manifest"), (SNAPSHOT, snapshot_id.encode()), (MODEL, model_name.encode())]
    if signature is not None:
        headers.append((SIGNATURE, signature.encode()))
    if lane:
        headers.append((LANE, lane.encode()))
    return headers


def parse_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> RecordHeader | None:
    """Classify a record by its headers; None when it is not a well-formed snapshot record."""
    values: dict[str, str] = {}
    for name, value in headers or ():
        if value is None:
            continue
        try:
            values[name] = value.decode()
        except UnicodeDecodeError:
            return None
    kind, snapshot = values.get(KIND), values.get(SNAPSHOT)
    lane = values.get(LANE, "")
    if not snapshot or lane not in ("", BASE_LANE):
        return None
    if kind == "manifest":
        return RecordHeader("manifest", snapshot, signature=values.get(SIGNATURE), lane=lane)
    if kind != "chunk":
        return None
    index, sep, count = values.get(CHUNK, "").partition("/")
    i, n = parse_ascii_int(index), parse_ascii_int(count)
    if not sep or i is None or n is None or n < 1 or i >= n:
        return None
    digest = values.get(CHUNK_SHA256)
    if digest is not None and (len(digest) != 64 or not set(digest) <= _HEX):
        return None
    return RecordHeader("chunk", snapshot, i, n, sha256=digest, lane=lane)
