"""Audit 45: a reject's detail quotes what the record held, but never more than a few hundred
characters of it, so a record carrying a megabyte string makes one readable log line and a
small ``streamtrain-error`` dead-letter header, and still says what was expected.

Before: ``weight``, ``timestamp`` or a sparse feature name of 1 MB came back whole in the
detail (1,000,031 characters): one megabyte log line per record, and a dead-letter header as
large as the record itself beside it (past the producer's 16 MiB with
``ingest.max_record_bytes`` raised, and then the record was lost)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamtrain.sample.spec import SampleSpec, SparseFeature
from streamtrain.wire import decode_json
from streamtrain.wire.label_record import LabelError, decode_label

MAX_DETAIL = 400  # wire.rejects.MAX_DETAIL

SPEC = SampleSpec(feature_shape=(4,), task="binary", sparse=(SparseFeature("user", "u", 8),))
HUGE = "a" * 1_000_000
LIMIT = MAX_DETAIL + 40  # the clip's own note


def _sample(**fields: object) -> bytes:
    return json.dumps({"features": [1, 2, 3, 4], "label": 1, **fields}).encode()


CASES = {
    "weight": (_sample(weight=HUGE), "bad_weight", "expected a number"),
    "timestamp": (_sample(timestamp=HUGE), "bad_timestamp", "expected epoch seconds"),
    "sparse name": (_sample(sparse={HUGE: [1]}), "unknown_sparse_feature", "(model.sparse)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_huge_value_makes_a_short_detail_that_keeps_its_hint(case: str) -> None:
    value, reason, hint = CASES[case]
    decoded = decode_json(SPEC, [value, _sample()], np.zeros(2))
    assert decoded.rows.tolist() == [1]  # the good record beside it is kept
    reject = decoded.rejects[0]
    assert reject.reason == reason
    assert len(reject.detail) <= LIMIT, len(reject.detail)
    assert reject.detail.endswith(hint) or hint in reject.detail[-MAX_DETAIL:], reject.detail
    assert "characters cut" in reject.detail


def test_a_label_with_a_huge_weight_makes_a_short_error() -> None:
    value = json.dumps({"id": "r1", "label": 1, "weight": HUGE}).encode()
    with pytest.raises(LabelError) as caught:
        decode_label(SPEC, value, None, b"r1", 0.0)
    assert caught.value.reason == "bad_weight"
    assert len(caught.value.detail) <= LIMIT and len(str(caught.value)) <= LIMIT + 20
    assert caught.value.detail.endswith("expected a number >= 0")
