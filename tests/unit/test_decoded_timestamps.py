"""A sample's timestamp is its own when the payload carries one, else its record's: whether
none, some or all of a poll's samples carry their own (``finish`` has a path for each)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import decode_binary, encode_binary

SPEC = SampleSpec(feature_shape=(2,), task="binary")


@pytest.mark.parametrize("own", [(), (1,), (0, 1, 2, 3)], ids=["none", "some", "all"])
def test_samples_take_their_own_time_else_their_records(own: tuple[int, ...]) -> None:
    values = [
        encode_binary(SPEC, [i, i], i % 2, timestamp=5_000.0 + i if i in own else math.nan)
        for i in range(4)
    ]
    values.insert(2, b"not a sample")  # a reject between them: rows and records differ
    record_ts = np.arange(5, dtype=np.float64) + 1_000.0
    decoded = decode_binary(SPEC, values, record_ts)
    assert decoded.rows.tolist() == [0, 1, 3, 4]
    assert list(decoded.rejects) == [2]
    expected = [5_000.0 + i if i in own else 1_000.0 + row for i, row in enumerate([0, 1, 3, 4])]
    assert decoded.timestamps.tolist() == expected
    assert decoded.timestamps.dtype == np.float64
    record_ts[:] = -1.0  # the samples' times are their own arrays, not views of the input
    assert decoded.timestamps.tolist() == expected
