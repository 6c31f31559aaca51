"""One poll's records to a :class:`DecodedChunk`: sizes and content types checked per record,
values decoded in bulk per codec, record order kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamtrain.ingest.codecs import Decoded, decode_binary, decode_json
from streamtrain.schema import (
    BINARY_CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    Reject,
)
from streamtrain.spec import SampleSpec


class KafkaRecord(Protocol):
    """The fields of a consumed record that ingest reads (kafka-python's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...  # epoch milliseconds, -1 when the broker has none
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass
class DecodedChunk:
    """The records of one poll, in order, and the samples decoded from them.

    ``sample_records[j]`` is the index in ``records`` of sample ``j``; ``rejects`` maps a
    record index to why that record is not a sample.
    """

    records: Sequence[KafkaRecord]
    partitions: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]
    decoded: Decoded

    @property
    def sample_records(self) -> npt.NDArray[np.int64]:
        return self.decoded.rows


def _content_type(record: KafkaRecord) -> bytes | None:
    for key, value in record.headers or ():
        if key.lower() == CONTENT_TYPE_HEADER:
            return value
    return None


Codec = Callable[[SampleSpec, Sequence[bytes], npt.NDArray[np.float64]], Decoded]

_JSON = JSON_CONTENT_TYPE.encode()
_BINARY = BINARY_CONTENT_TYPE.encode()


def decode_records(
    spec: SampleSpec, records: Sequence[KafkaRecord], max_record_bytes: int
) -> DecodedChunk:
    """Decode one poll's records (any mix of partitions and codecs), keeping their order."""
    n = len(records)
    stamps = np.fromiter((r.timestamp for r in records), np.float64, n) / 1000.0
    if n and (stamps < 0).any():
        stamps[stamps < 0] = time.time()
    rejects: dict[int, Reject] = {}
    json_rows: list[int] = []
    binary_rows: list[int] = []
    for i, record in enumerate(records):
        value = record.value
        if value is None:
            rejects[i] = Reject("undecodable", "record has no value (a tombstone)")
            continue
        if len(value) > max_record_bytes:
            rejects[i] = Reject(
                "oversized",
                f"record is {len(value)} bytes, over the {max_record_bytes}-byte limit "
                "(ingest.max_record_bytes)",
            )
            continue
        kind = _content_type(record)
        if kind is None or kind.split(b";")[0].strip().lower() == _JSON:
            json_rows.append(i)
        elif kind.strip().lower() == _BINARY:
            binary_rows.append(i)
        else:
            rejects[i] = Reject(
                "unknown_content_type",
                f"content-type {kind.decode(errors='replace')!r} is neither "
                f"{JSON_CONTENT_TYPE!r} nor {BINARY_CONTENT_TYPE!r}",
            )
    parts = [
        _decode_subset(spec, records, rows, stamps, codec)
        for rows, codec in ((json_rows, decode_json), (binary_rows, decode_binary))
        if rows
    ]
    decoded = _merge(spec, parts, rejects)
    return DecodedChunk(
        records=records,
        partitions=np.fromiter((r.partition for r in records), np.int64, n),
        offsets=np.fromiter((r.offset for r in records), np.int64, n),
        decoded=decoded,
    )


def _decode_subset(
    spec: SampleSpec,
    records: Sequence[KafkaRecord],
    rows: list[int],
    stamps: npt.NDArray[np.float64],
    codec: Codec,
) -> Decoded:
    values = [records[i].value or b"" for i in rows]
    index = np.asarray(rows, dtype=np.int64)
    decoded = codec(spec, values, stamps[index])
    # Map positions within the subset back to positions within the poll.
    decoded.rows = index[decoded.rows]
    decoded.rejects = {rows[k]: v for k, v in decoded.rejects.items()}
    return decoded


def _merge(spec: SampleSpec, parts: list[Decoded], rejects: dict[int, Reject]) -> Decoded:
    for part in parts:
        rejects.update(part.rejects)
    if not parts:
        return Decoded.nothing(spec, rejects)
    if len(parts) == 1:
        parts[0].rejects = rejects
        return parts[0]
    rows = np.concatenate([p.rows for p in parts])
    order = np.argsort(rows, kind="stable")
    return Decoded(
        rows=rows[order],
        features=np.concatenate([p.features for p in parts])[order],
        labels=np.concatenate([p.labels for p in parts])[order],
        weights=np.concatenate([p.weights for p in parts])[order],
        timestamps=np.concatenate([p.timestamps for p in parts])[order],
        rejects=rejects,
    )
