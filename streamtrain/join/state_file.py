"""One partition's join state on disk: a safetensors file, written atomically (no pickle).

Byte strings (request ids, served samples, pending labels' keys and values) are packed into
one ``uint8`` tensor each with an ``int64`` tensor of lengths; numbers are ``float64``
tensors; the rest (input offsets, the samples topic's end offsets at checkpoint time, label
values, headers) is one JSON document in the safetensors metadata. The partition's
served-quality pairing, when the join scores it, rides in the same file
(:mod:`streamtrain.quality.checkpoint`). A file is written to a temporary name, fsynced,
renamed over the old one and its folder fsynced, so a kill -9 at any instant leaves either
the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load, save

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.join.partition_state import (
    JoinPolicy,
    PartitionState,
    PendingLabel,
    PendingPrediction,
    Resolved,
    SourceRecord,
)
from streamtrain.join.pause_hook import pause_point
from streamtrain.quality.checkpoint import pack as pack_quality
from streamtrain.quality.pairing import ServedQuality
from streamtrain.quality.partitions import PartitionedQuality
from streamtrain.sample.record_mark import RecordMark
from streamtrain.wire.label_record import LabelRecord
from streamtrain.wire.packed import pack_bytes, unpack_bytes

FORMAT = "streamtrain-join-state/1"


class StateFileError(ValueError):
    """A state file that cannot be read back (corrupt, or of another format)."""


@dataclass(frozen=True)
class Checkpointed:
    """A partition's state as loaded, with the samples topic's ends when it was written."""

    state: PartitionState
    samples_ends: dict[int, int]
    quality: ServedQuality | None = None
    """The partition's served-quality pairing, when the file holds one and one was asked for."""


def state_path(state_dir: Path, predictions_topic: str, partition: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in predictions_topic)
    return state_dir / f"{safe}-{partition}.safetensors"


def write_state(
    path: Path,
    state: PartitionState,
    samples_ends: Mapping[int, int],
    quality: ServedQuality | None = None,
) -> int:
    """Write ``state``, ``samples_ends`` and the partition's served-quality pairing
    (``quality``, when scored) to ``path`` atomically; returns the bytes written."""
    preds = state.predictions
    done = state.resolved
    labels = list(state.labels.values())
    tensors: dict[str, npt.NDArray[Any]] = {}
    pack_bytes(tensors, "prediction_ids", [rid.encode() for rid in preds])
    pack_bytes(tensors, "prediction_samples", [p.sample for p in preds.values()])
    tensors["prediction_served_at"] = np.fromiter(
        (p.served_at for p in preds.values()), np.float64, len(preds)
    )
    pack_bytes(tensors, "resolved_ids", [rid.encode() for rid in done])
    tensors["resolved_served_at"] = np.fromiter(
        (r.served_at for r in done.values()), np.float64, len(done)
    )
    tensors["resolved_joined"] = np.fromiter((r.joined for r in done.values()), np.uint8, len(done))
    pack_bytes(tensors, "label_keys", [w.record.key or b"" for w in labels])
    pack_bytes(tensors, "label_values", [w.record.value or b"" for w in labels])
    doc = {
        "format": FORMAT,
        "partition": state.partition,
        "predictions_offset": state.predictions_offset,
        "labels_offset": state.labels_offset,
        # Absent in files written before fingerprints: read back as None (unchecked).
        "predictions_mark": _mark_doc(state.predictions_mark),
        "labels_mark": _mark_doc(state.labels_mark),
        "predictions_seen_until": state.predictions_seen_until,
        "labels_seen_until": state.labels_seen_until,
        "samples_ends": {str(p): o for p, o in samples_ends.items()},
        "labels": [_label_doc(w) for w in labels],
        # Emitted before the previous crash and not yet met again by the replay: the next
        # restart scans from newer ends, so these must travel in the checkpoint.
        "already_emitted": sorted(state.already_emitted.items()),
    }
    if quality is not None:  # in the same file: one atomic checkpoint for both
        doc["quality"] = pack_quality(quality, tensors)
    data = save(tensors, metadata={"join": msgspec.json.encode(doc).decode()})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    pause_point("written", state.partition, len(done))  # test-only (pause_hook), else nothing
    os.replace(tmp, path)
    pause_point("replaced", state.partition, len(done))
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return len(data)


def read_state(
    path: Path, policy: JoinPolicy, quality: PartitionedQuality | None = None
) -> Checkpointed | None:
    """The checkpoint at ``path``, or None when there is none yet; with ``quality``, the
    served-quality pairing in it too (None in a file written without one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        tensors = load(data)
        doc = msgspec.json.decode(_metadata(data)["join"])
        if doc.get("format") != FORMAT:
            raise StateFileError(f"{path} has format {doc.get('format')!r}, expected {FORMAT}")
        state = PartitionState(int(doc["partition"]), policy)
        ids = unpack_bytes(tensors, "prediction_ids")
        samples = unpack_bytes(tensors, "prediction_samples")
        served = tensors["prediction_served_at"].tolist()
        for rid, sample, at in zip(ids, samples, served, strict=True):
            state.predictions[rid.decode()] = PendingPrediction(at, sample)
        done_ids = unpack_bytes(tensors, "resolved_ids")
        done_at = tensors["resolved_served_at"].tolist()
        joined = tensors["resolved_joined"].tolist()
        for rid, at, was_joined in zip(done_ids, done_at, joined, strict=True):
            state.resolved[rid.decode()] = Resolved(bool(was_joined), at)
        keys = unpack_bytes(tensors, "label_keys")
        values = unpack_bytes(tensors, "label_values")
        for entry, key, value in zip(doc["labels"], keys, values, strict=True):
            waiting = _label_from(entry, key, value)
            state.labels[waiting.label.request_id] = waiting
        for rid, outcome in doc["already_emitted"]:
            if outcome not in ("joined", "default_label"):
                raise ValueError(f"unknown outcome {outcome!r}")
            state.already_emitted[str(rid)] = outcome
        state.predictions_offset = int(doc["predictions_offset"])
        state.labels_offset = int(doc["labels_offset"])
        state.predictions_mark = _mark_from(doc.get("predictions_mark"))
        state.labels_mark = _mark_from(doc.get("labels_mark"))
        state.predictions_seen_until = float(doc["predictions_seen_until"])
        state.labels_seen_until = float(doc["labels_seen_until"])
        ends = {_partition(p): int(o) for p, o in doc["samples_ends"].items()}
        pairs = None
        if quality is not None and "quality" in doc:
            pairs = quality.unpack(tensors, doc["quality"])
    except StateFileError:
        raise
    except (KeyError, TypeError, ValueError, msgspec.DecodeError, SafetensorError) as exc:
        raise StateFileError(
            f"join state file {path} cannot be read ({type(exc).__name__}: {exc}); move it "
            "away to start that partition afresh (its pending predictions are then lost)"
        ) from None
    return Checkpointed(state, ends, pairs)


def _mark_doc(mark: RecordMark | None) -> dict[str, Any] | None:
    return None if mark is None else mark.to_json()


def _mark_from(doc: Any) -> RecordMark | None:
    return None if doc is None else RecordMark.from_json(doc)


def _metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = msgspec.json.decode(data[8 : 8 + header_len])
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise StateFileError("state file has no metadata")
    return meta


def _label_doc(waiting: PendingLabel) -> dict[str, Any]:
    label, record = waiting.label, waiting.record
    return {
        "id": label.request_id,
        "label": label.label,
        "weight": label.weight,
        "timestamp": label.timestamp,
        "source": [record.topic, record.partition, record.offset, record.timestamp],
        "headers": [[name, value.hex()] for name, value in record.headers],
    }


def _label_from(doc: dict[str, Any], key: bytes, value: bytes) -> PendingLabel:
    raw = doc["label"]
    label = LabelRecord(
        doc["id"],
        int(raw) if isinstance(raw, int) else tuple(float(x) for x in raw),
        float(doc["weight"]),
        float(doc["timestamp"]),
    )
    topic, partition, offset, stamp = doc["source"]
    headers = tuple((str(name), bytes.fromhex(hexed)) for name, hexed in doc["headers"])
    # A waiting label passed decoding, so its key was None or its non-empty id.
    record = SourceRecord(
        topic, int(partition), int(offset), int(stamp), key or None, value, headers
    )
    return PendingLabel(label, record)


def _partition(key: str) -> int:
    """A partition number that JSON forced into a string key; ValueError when it is not one."""
    number = parse_ascii_int(key)
    if number is None:
        raise ValueError(f"partition {key!r} is not a non-negative integer")
    return number
