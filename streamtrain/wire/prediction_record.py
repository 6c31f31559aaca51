"""One logged prediction on the prediction-log topic (``application/x-streamtrain-prediction``).

The server writes one record per served sample (a batched request writes one per row); the
join (:mod:`streamtrain.join`) later attaches the label that arrives for its request id and
emits the embedded sample, whose feature bytes are exactly the ones the model saw, to the
samples topic. Little-endian, packed::

    offset  size    field
    0       4       magic b"STP1"
    4       8       served_at, float64 epoch seconds
    12      8       model version, uint64 (the trainer step of the served weights)
    20      2       uint16 R: length of the run id
    22      R       run id, UTF-8
    ..      2       uint16 I: length of the request id (1..256)
    ..      I       request id, UTF-8 (also the record key)
    ..      4       uint32 O: number of outputs
    ..      4*O     outputs, float32: the model's output row for this sample, as served
    ..      rest    the served sample: a binary layout v1 or v2 record (label zero, weight 1,
                    timestamp = served_at), see ``docs/wire-format.md``

A row served by a traffic split's candidate or computed in shadow
(:mod:`streamtrain.serve.protocol.split`) is written as ``STP2``: the magic ``b"STP2"``, one
byte naming its arm (:data:`ARMS`: 1 candidate, 2 shadow), then the ``STP1`` layout from
offset 4 on. A live row stays ``STP1``, so readers of the first layout still read every row
of a server without a split.

Every length is checked against the bytes that arrived before anything is sliced, so a record
that announces more than it carries costs nothing.

>>> rec = PredictionRecord("req-1", 1700000000.5, 42, "run-a", (0.25, 0.75), b"STS1...")
>>> decode_prediction(encode_prediction(rec)) == rec
True
>>> shadow = PredictionRecord("req-1", 1.0, 3, "run-a", (0.5,), b"STS1...", arm="shadow")
>>> encode_prediction(shadow)[:5], decode_prediction(encode_prediction(shadow)).arm
(b'STP2\\x02', 'shadow')
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal

from streamtrain.wire.rejects import RecordError

PREDICTION_CONTENT_TYPE = "application/x-streamtrain-prediction"
PREDICTION_MAGIC = b"STP1"
ARM_MAGIC = b"STP2"
Arm = Literal["live", "candidate", "shadow"]
ARMS: tuple[Arm, ...] = ("live", "candidate", "shadow")
"""The arms a served row may come from, in the order of their ``STP2`` code byte."""
MAX_ID_BYTES = 256
"""A request id longer than this (in UTF-8) is refused by the server and the join."""

_HEAD = struct.Struct("<4sdQH")
_LEN16 = struct.Struct("<H")
_LEN32 = struct.Struct("<I")

PredictionReason = Literal["undecodable", "bad_id"]


class PredictionRecordError(RecordError[PredictionReason]):
    """A prediction-log record that cannot be read; ``reason`` and ``detail`` say why."""


@dataclass(frozen=True)
class PredictionRecord:
    """What the server logged for one served sample."""

    request_id: str
    served_at: float
    model_version: int
    run_id: str
    outputs: tuple[float, ...]
    sample: bytes
    """The served sample as a binary v1/v2 record; its features are what the model saw."""
    arm: Arm = "live"
    """Which side of a traffic split computed the row; ``shadow`` rows were never returned."""


def check_request_id(request_id: str) -> bytes:
    """The UTF-8 bytes of a valid request id; PredictionRecordError(``bad_id``) otherwise."""
    try:
        raw = request_id.encode()
    except UnicodeEncodeError:
        raise PredictionRecordError("bad_id", "request id is not valid Unicode text") from None
    if not 1 <= len(raw) <= MAX_ID_BYTES:
        raise PredictionRecordError(
            "bad_id", f"request id is {len(raw)} UTF-8 bytes; expected 1 to {MAX_ID_BYTES}"
        )
    return raw


def encode_prediction(record: PredictionRecord) -> bytes:
    """The record value of one logged prediction (the key should be the request id)."""
    run = record.run_id.encode()[:0xFFFF]
    rid = check_request_id(record.request_id)
    parts = [
        b"" if record.arm == "live" else ARM_MAGIC + bytes((ARMS.index(record.arm),)),
        _HEAD.pack(PREDICTION_MAGIC, record.served_at, record.model_version, len(run))[
            0 if record.arm == "live" else 4 :
        ],
        run,
        _LEN16.pack(len(rid)),
        rid,
        _LEN32.pack(len(record.outputs)),
        struct.pack(f"<{len(record.outputs)}f", *record.outputs),
        record.sample,
    ]
    return b"".join(parts)


def decode_prediction(value: bytes | None) -> PredictionRecord:
    """Read one prediction-log record; PredictionRecordError says what is wrong.

    Only the framing is checked here; the embedded sample is checked against the model by
    the binary sample decoder, like any sample.
    """
    arm, base = _arm_of(value)
    if not value or len(value) < base + _HEAD.size:
        size = 0 if value is None else len(value)
        raise PredictionRecordError(
            "undecodable", f"record is {size} bytes, shorter than the {_HEAD.size}-byte header"
        )
    _, served_at, version, run_len = _HEAD.unpack_from(value, base)
    if not math.isfinite(served_at):
        raise PredictionRecordError("undecodable", f"served_at is {served_at}")
    at = base + _HEAD.size
    run = _take(value, at, run_len, "run id")
    at += run_len
    (id_len,) = _LEN16.unpack_from(_take(value, at, _LEN16.size, "request id length"))
    at += _LEN16.size
    rid = _take(value, at, id_len, "request id")
    at += id_len
    (n_out,) = _LEN32.unpack_from(_take(value, at, _LEN32.size, "output count"))
    at += _LEN32.size
    outputs = _take(value, at, 4 * n_out, "outputs")
    at += 4 * n_out
    try:
        run_id, request_id = run.decode(), rid.decode()
    except UnicodeDecodeError:
        raise PredictionRecordError("undecodable", "run id or request id is not UTF-8") from None
    check_request_id(request_id)
    return PredictionRecord(
        request_id,
        served_at,
        version,
        run_id,
        struct.unpack(f"<{n_out}f", outputs),
        bytes(value[at:]),
        arm,
    )


def _arm_of(value: bytes | None) -> tuple[Arm, int]:
    """The record's arm and where its ``STP1`` fields start (past ``STP2``'s arm byte)."""
    magic = (value or b"")[:4]
    if magic == ARM_MAGIC and value is not None:
        code = value[4] if len(value) > 4 else 0  # too short: the size check says so
        if code >= len(ARMS):
            raise PredictionRecordError(
                "undecodable", f"arm code is {code}; expected 0 to {len(ARMS) - 1}"
            )
        return ARMS[code], 1
    if magic != PREDICTION_MAGIC and len(magic) == 4:
        raise PredictionRecordError(
            "undecodable", f"magic is {magic!r}; expected {PREDICTION_MAGIC!r} or {ARM_MAGIC!r}"
        )
    return "live", 0


def _take(value: bytes, at: int, size: int, what: str) -> bytes:
    """``value[at:at+size]``, refusing a field that runs past the record's end."""
    if at + size > len(value):
        raise PredictionRecordError(
            "undecodable",
            f"{what} needs {size} bytes at offset {at}, but the record is {len(value)} bytes",
        )
    return value[at : at + size]
