"""A partition's served-quality pairing as tensors in the join's state file (no pickle).

:func:`pack` adds ``quality_*`` tensors to the join's safetensors file and returns the small
JSON part (a format tag); :func:`unpack` reads them back into an empty pairing. Stored, each
oldest first so the bounds evict in the same order after a restart:

* the rows waiting for their label: request id, version, arm, served time, outputs;
* the labels remembered for rows still to come: request id, and the class (an ``int64``)
  or the regression values (``float64``, ``-1`` as class);
* the (id, arm) of the newest rows, that skip a replayed record;
* every (version, arm) tally: its sums (:class:`~streamtrain.quality.books.Tally`) and its
  event-time window of scored rows.

All of it is bounded as in memory: ``join.max_pending_predictions`` rows and seen pairs,
``join.max_pending_labels`` labels, ``join.quality_versions`` + 1 versions of 3 arms, each
window at most 100 000 rows (7 ``float64`` each).

>>> from streamtrain.sample.spec import SampleSpec
>>> from streamtrain.quality.books import VersionBooks
>>> from streamtrain.wire.prediction_record import PredictionRecord
>>> fresh = lambda: ServedQuality(VersionBooks(SampleSpec((2,), "binary"), 4, 60.0))
>>> pairs = fresh()
>>> pairs.prediction(PredictionRecord("r1", 10.0, 7, "run", (0.2, 0.8), b""))
>>> tensors = {}
>>> doc = pack(pairs, tensors)
>>> back = unpack(fresh, tensors, doc)
>>> back.label("r1", 1)
>>> [(r.version, r.labelled) for r in back.books.report() if r.labelled]
[('7', 1)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from streamtrain.quality.books import Tally
from streamtrain.quality.figures import RowScore
from streamtrain.quality.pairing import Served, ServedQuality
from streamtrain.wire.label_record import Label
from streamtrain.wire.packed import pack_bytes, unpack_bytes
from streamtrain.wire.prediction_record import ARMS, Arm

FORMAT = "streamtrain-served-quality/1"
Tensors = dict[str, npt.NDArray[Any]]
_SUMS = 8  # served, labelled, loss, loss², correct, |error|, error², newest
_ROW = 7  # served_at and a RowScore's six fields


def pack(pairs: ServedQuality, tensors: Tensors) -> dict[str, Any]:
    """Add ``pairs`` to ``tensors``; the JSON part for the state file's metadata."""
    waiting = pairs.waiting()
    pack_bytes(tensors, "quality_row_ids", [rid.encode() for rid, _ in waiting])
    rows = [row for _, row in waiting]
    tensors["quality_row_versions"] = np.array([r.version for r in rows], np.int64)
    tensors["quality_row_arms"] = np.array([ARMS.index(r.arm) for r in rows], np.uint8)
    tensors["quality_row_served_at"] = np.array([r.served_at for r in rows], np.float64)
    _pack_floats(tensors, "quality_row_outputs", [r.outputs for r in rows])
    labels = pairs.remembered()
    pack_bytes(tensors, "quality_label_ids", [rid.encode() for rid, _ in labels])
    tensors["quality_label_classes"] = np.array(
        [label if isinstance(label, int) else -1 for _, label in labels], np.int64
    )
    _pack_floats(
        tensors, "quality_label_values", [() if isinstance(v, int) else v for _, v in labels]
    )
    seen = pairs.seen()
    pack_bytes(tensors, "quality_seen_ids", [rid.encode() for rid, _ in seen])
    tensors["quality_seen_arms"] = np.array([ARMS.index(arm) for _, arm in seen], np.uint8)
    _pack_tallies(tensors, pairs.books.tallies())
    return {"format": FORMAT}


def unpack(
    fresh: Callable[[], ServedQuality], tensors: Mapping[str, npt.NDArray[Any]], doc: Any
) -> ServedQuality:
    """The pairing :func:`pack` stored, in ``fresh()``; ValueError, KeyError or TypeError
    when the tensors do not fit together."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"served quality has format {doc!r}, expected {FORMAT}")
    pairs = fresh()
    ids = [b.decode() for b in unpack_bytes(tensors, "quality_row_ids")]
    outputs = _unpack_floats(tensors, "quality_row_outputs")
    versions = tensors["quality_row_versions"].tolist()
    arms = _arms(tensors["quality_row_arms"])
    served_at = tensors["quality_row_served_at"].tolist()
    waiting = [
        (rid, Served(int(v), arm, float(at), out))
        for rid, v, arm, at, out in zip(ids, versions, arms, served_at, outputs, strict=True)
    ]
    label_ids = [b.decode() for b in unpack_bytes(tensors, "quality_label_ids")]
    classes = tensors["quality_label_classes"].tolist()
    values = _unpack_floats(tensors, "quality_label_values")
    remembered: list[tuple[str, Label]] = [
        (rid, int(c) if c >= 0 else v) for rid, c, v in zip(label_ids, classes, values, strict=True)
    ]
    seen_ids = [b.decode() for b in unpack_bytes(tensors, "quality_seen_ids")]
    seen = list(zip(seen_ids, _arms(tensors["quality_seen_arms"]), strict=True))
    pairs.restore(waiting, remembered, seen)
    for version, arm, tally in _unpack_tallies(tensors):
        pairs.books.restore(version, arm, tally)
    return pairs


def _pack_tallies(tensors: Tensors, tallies: list[tuple[int | None, Arm, Tally]]) -> None:
    tensors["quality_tally_versions"] = np.array(
        [-1 if v is None else v for v, _, _ in tallies], np.int64
    )
    tensors["quality_tally_arms"] = np.array([ARMS.index(a) for _, a, _ in tallies], np.uint8)
    sums = [_sums(t) for _, _, t in tallies]
    tensors["quality_tally_sums"] = np.array(sums, np.float64).reshape(-1, _SUMS)
    tensors["quality_tally_window_rows"] = np.array([len(t.window) for *_, t in tallies], np.int64)
    window = [
        (at, r.loss, r.correct, r.abs_error, r.squared_error, r.score, float(r.positive))
        for *_, t in tallies
        for at, r in t.window
    ]
    tensors["quality_tally_window"] = np.array(window, np.float64).reshape(-1, _ROW)


def _sums(t: Tally) -> tuple[float, ...]:
    return (*t.running_sums(), t.newest)


def _unpack_tallies(
    tensors: Mapping[str, npt.NDArray[Any]],
) -> list[tuple[int | None, Arm, Tally]]:
    versions = tensors["quality_tally_versions"].tolist()
    arms = _arms(tensors["quality_tally_arms"])
    sums = tensors["quality_tally_sums"].reshape(-1, _SUMS).tolist()
    counts = tensors["quality_tally_window_rows"].tolist()
    window = tensors["quality_tally_window"].reshape(-1, _ROW).tolist()
    if sum(counts) != len(window) or min(counts, default=0) < 0:
        raise ValueError(f"tally windows of {counts} rows, {len(window)} stored")
    out: list[tuple[int | None, Arm, Tally]] = []
    start = 0
    for version, arm, s, count in zip(versions, arms, sums, counts, strict=True):
        rows = window[start : start + count]
        start += count
        tally = Tally(int(s[0]), int(s[1]), s[2], s[3], s[4], s[5], s[6], newest=s[7])
        tally.window.extend(
            (r[0], RowScore(r[1], r[2], r[3], r[4], r[5], bool(r[6]))) for r in rows
        )
        out.append((None if version < 0 else int(version), arm, tally))
    return out


def _pack_floats(tensors: Tensors, name: str, items: list[tuple[float, ...]]) -> None:
    tensors[name] = np.array([x for item in items for x in item], np.float64)
    tensors[name + "_lengths"] = np.array([len(item) for item in items], np.int64)


def _unpack_floats(tensors: Mapping[str, npt.NDArray[Any]], name: str) -> list[tuple[float, ...]]:
    flat = tensors[name].tolist()
    lengths = tensors[name + "_lengths"].tolist()
    if sum(lengths) != len(flat) or min(lengths, default=0) < 0:
        raise ValueError(f"{name}: lengths add up to {sum(lengths)}, {len(flat)} stored")
    out, start = [], 0
    for n in lengths:
        out.append(tuple(flat[start : start + n]))
        start += n
    return out


def _arms(codes: npt.NDArray[Any]) -> list[Arm]:
    values = codes.tolist()
    if any(not 0 <= c < len(ARMS) for c in values):
        raise ValueError(f"an arm code outside 0..{len(ARMS) - 1}")
    return [ARMS[c] for c in values]
