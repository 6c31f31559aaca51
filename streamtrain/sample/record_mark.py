"""The fingerprint of one consumed record: how a reader knows a log is still the one it read.

A position (partition, next offset) says where a reader stands in *a* log, not in which one.
A broker that came back empty, a deleted and re-created topic or a restored volume can put a
different log under the same name; once that log has grown past the position, the position
looks valid and the reader would silently skip the new log's first records. So a reader also
keeps the :class:`RecordMark` of the last record it consumed per partition, and before trusting
a stored position (at start from a checkpoint, after every reconnection) compares it with the
record now at that offset (:func:`streamtrain.kafka.mark_check.verify_marks`).

The mark holds the offset, the record timestamp and SHA-256 digests of key and value. Two
different logs whose record at that offset is byte-identical, timestamp included, are not told
apart; that is the documented limit (docs/operations.md, "Offset reset").

>>> class R:
...     offset, timestamp, key, value = 7, 1700000000000, b"k", b"v"
>>> mark = mark_of(R())
>>> RecordMark.from_json(mark.to_json()) == mark
True
>>> mark.differs(mark_of(R())) is None
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from streamtrain.ascii_int import parse_ascii_int


class MarkedRecord(Protocol):
    """The fields a fingerprint reads (every consumed record of both clients has them)."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class RecordMark:
    """Offset, timestamp (epoch ms, -1 when none) and key/value SHA-256 of one record."""

    offset: int
    timestamp: int
    key_sha256: str | None
    value_sha256: str | None

    def differs(self, now: RecordMark) -> str | None:
        """What differs between this mark and the record ``now`` at the same offset; None
        when they agree."""
        changed = [
            name
            for name in ("timestamp", "key_sha256", "value_sha256")
            if getattr(self, name) != getattr(now, name)
        ]
        if not changed:
            return None
        what = ", ".join(name.replace("_sha256", " digest") for name in changed)
        return f"the record at offset {self.offset} is not the one read before ({what} differ)"

    def to_json(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key_sha256": self.key_sha256,
            "value_sha256": self.value_sha256,
        }

    @classmethod
    def from_json(cls, doc: Any) -> RecordMark:
        """Parse a stored mark; ``ValueError`` (one line, naming the field) when malformed."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"a record mark must be a JSON object, got {type(doc).__name__}")
        offset, timestamp = doc.get("offset"), doc.get("timestamp")
        if type(offset) is not int or offset < 0:
            raise ValueError(f"record mark offset {offset!r} is not a non-negative integer")
        if type(timestamp) is not int:
            raise ValueError(f"record mark timestamp {timestamp!r} is not an integer")
        digests = []
        for name in ("key_sha256", "value_sha256"):
            value = doc.get(name)
            if value is not None and (
                not isinstance(value, str)
                or len(value) != 64
                or any(c not in "0123456789abcdef" for c in value)
            ):
                raise ValueError(f"record mark {name} {value!r} is not a SHA-256 hex digest")
            digests.append(value)
        return cls(offset, timestamp, digests[0], digests[1])


def mark_of(record: MarkedRecord) -> RecordMark:
    """The fingerprint of ``record``."""
    return RecordMark(
        offset=int(record.offset),
        timestamp=int(record.timestamp),
        key_sha256=_digest(record.key),
        value_sha256=_digest(record.value),
    )


def marks_to_json(marks: Mapping[int, RecordMark]) -> dict[str, dict[str, Any]]:
    """Partition -> mark as JSON (partition keys as strings, as JSON forces)."""
    return {str(p): mark.to_json() for p, mark in sorted(marks.items())}


def marks_from_json(doc: Any) -> dict[int, RecordMark]:
    """The inverse of :func:`marks_to_json`; ``ValueError`` (one line) when malformed."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"record marks must be a JSON object, got {type(doc).__name__}")
    marks = {}
    for key, value in doc.items():
        partition = parse_ascii_int(key) if isinstance(key, str) else None
        if partition is None:
            raise ValueError(f"record marks: partition {key!r} is not a non-negative integer")
        marks[partition] = RecordMark.from_json(value)
    return marks
