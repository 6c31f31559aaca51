"""Audit 45: a sample timestamp far in the future is refused (``bad_timestamp``, with a hint
when it looks like epoch milliseconds), in both codecs.

Before: only an infinite timestamp was refused. The trainer's data watermark is the newest
timestamp learned from and never goes back, so one sample sent with epoch milliseconds held
the watermark (``streamtrain_train_data_watermark_seconds``, every manifest's
``data_watermark``, the servers' ``streamtrain_serve_data_age_seconds``) 50,000 years ahead
for good, negative data ages and all."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import decode_binary, decode_json, encode_binary

DAY = 86400.0  # wire.decoded.DAY

SPEC = SampleSpec(feature_shape=(4,), task="binary")


def _json(stamp: float) -> bytes:
    return json.dumps({"features": [1, 2, 3, 4], "label": 1, "timestamp": stamp}).encode()


def _decode(codec: str, stamps: list[float]) -> dict[int, str]:
    """Row -> ``reason: detail`` of each refused sample of one poll."""
    if codec == "json":
        decoded = decode_json(SPEC, [_json(s) for s in stamps], np.zeros(len(stamps)))
    else:
        values = [encode_binary(SPEC, [1, 2, 3, 4], 1, timestamp=s) for s in stamps]
        decoded = decode_binary(SPEC, values, np.zeros(len(stamps)))
    return {row: f"{r.reason}: {r.detail}" for row, r in decoded.rejects.items()}


@pytest.mark.parametrize("codec", ["json", "binary"])
def test_future_timestamps_are_refused_and_the_others_kept(codec: str) -> None:
    now = time.time()
    stamps = [now, now - 3 * 365 * 86400, now + DAY / 2, now * 1000, 1e300,
              now + 2 * DAY]  # fmt: skip
    rejects = _decode(codec, stamps)
    assert set(rejects) == {3, 4, 5}, rejects
    assert all(r.startswith("bad_timestamp: ") for r in rejects.values())
    assert "epoch milliseconds: divide by 1000" in rejects[3]
    assert "milliseconds" not in rejects[4] and "milliseconds" not in rejects[5]
    assert "ahead of this process's clock" in rejects[5]
