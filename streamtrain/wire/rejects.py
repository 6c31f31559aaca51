"""Why a record is not a valid sample: the reject reasons of the wire format, in one place.

Every codec reports a refused record as a :class:`Reject`: one reason of :data:`REASONS` (the
``reason`` label of ``streamtrain_ingest_rejected_records``) and a detail that names what was
expected. Encoders raise the same reject inside a :class:`SampleError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, get_args

RejectReason = Literal[
    "undecodable",  # not UTF-8 JSON / not an object / wrong binary magic / tombstone
    "bad_shape",  # features missing, of the wrong shape or length, or not numbers
    "non_finite",  # NaN or Inf in features, label or weight
    "bad_label",  # missing, of the wrong type, or out of range
    "bad_weight",  # negative or not a number
    "bad_timestamp",  # not a finite number
    "oversized",  # larger than max_record_bytes
    "unknown_content_type",  # a content-type header naming neither codec
    "bad_sparse",  # sparse not an object, or a feature's IDs not a list of int64s / strings
    "sparse_too_long",  # more IDs than the feature's max_length
    "unknown_sparse_feature",  # a sparse feature the model does not declare
    "bad_sparse_weight",  # per-ID weights not finite numbers >= 0, one per ID
]
REASONS: tuple[RejectReason, ...] = get_args(RejectReason)

# A detail quotes what the record held (``weight is 'abc'``): a record's megabyte of string
# would otherwise become a megabyte log line and dead-letter header per record (the header
# beside the value can pass the dead-letter producer's 16 MiB, and the record is lost).
MAX_DETAIL = 400


def clip_detail(detail: str, limit: int = MAX_DETAIL) -> str:
    """``detail`` cut in the middle to about ``limit`` characters, so both what was found
    (its start) and what was expected (its end, the hint) stay.

    >>> clip_detail("weight is '" + "a" * 1000 + "', expected a number", 60)
    "weight is 'aaaaaaaaaaaaaaaaaaa…[971 characters cut]…aaaaaaaaaa', expected a number"
    """
    if len(detail) <= limit:
        return detail
    keep = limit // 2
    cut = len(detail) - 2 * keep
    return f"{detail[:keep]}…[{cut} characters cut]…{detail[-keep:]}"


@dataclass(frozen=True)
class Reject:
    """Why one record is not a valid sample: a reason from :data:`REASONS` and a detail.

    >>> str(Reject("bad_label", "label is missing"))
    'bad_label: label is missing'
    """

    reason: RejectReason
    detail: str

    def __post_init__(self) -> None:
        if len(self.detail) > MAX_DETAIL:
            object.__setattr__(self, "detail", clip_detail(self.detail))

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class SampleError(ValueError):
    """A sample that cannot be encoded or decoded; ``reject`` says why."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(str(reject))
        self.reject = reject


_Reason = TypeVar("_Reason", bound=str)


class RecordError(ValueError, Generic[_Reason]):
    """A record of a delayed-labels topic that cannot be read: ``reason`` (a metric or
    dead-letter label) and ``detail`` (what was expected), the one shape both
    ``LabelError`` and ``PredictionRecordError`` take."""

    def __init__(self, reason: _Reason, detail: str) -> None:
        detail = clip_detail(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason: _Reason = reason
        self.detail = detail


def shape_text(shape: Sequence[int]) -> str:
    """A shape as reject details print it: ``[1, 8, 8]``."""
    return "[" + ", ".join(str(d) for d in shape) + "]"
