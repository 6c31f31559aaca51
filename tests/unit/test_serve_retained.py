"""RetainedVersions' rules: what is retained and evicted, pin / unpin / rollback, the pin file,
and a recorded pin whose version is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.weights.inference import head_for
from streamtrain.serve.weights.retained import AdminError, RetainedVersions
from streamtrain.serve.weights.slot import SnapshotRejected, WeightSlot
from streamtrain.snapshot.cache import SnapshotCache
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.version_fixtures import (
    expected_value,
    tiny_regression_model,
    version_weights,
)

SPEC = SampleSpec((2,), "regression")


def _versions(tmp_path: Path, keep: int = 2) -> tuple[RetainedVersions, WeightSlot, SnapshotCache]:
    model = tiny_regression_model(2)
    slot = WeightSlot(model)
    cache = SnapshotCache(tmp_path, settings_hash="h")
    retained = RetainedVersions(
        slot, tiny_regression_model(2), head_for(SPEC), torch.device("cpu"), keep, cache
    )
    return retained, slot, cache


def _load(retained: RetainedVersions, version: int) -> None:
    tensors = version_weights(tiny_regression_model(2), version)
    retained.load(tensors, SnapshotHeader(version, "r", created_at=float(version)))


def test_pin_unpin_rollback_and_eviction(tmp_path: Path) -> None:
    retained, slot, cache = _versions(tmp_path)
    for version in (1, 2, 3):
        _load(retained, version)
    assert retained.versions() == [3, 2] and slot.info and slot.info.version == 3

    assert retained.pin(2)["live"] == "2" and cache.read_pin() == 2
    for version in (4, 5):
        _load(retained, version)
    assert slot.info.version == 2  # pinned: new versions are retained, not live
    assert retained.versions() == [5, 4, 2]  # the pinned one is never evicted
    prediction = asyncio.run(retained.infer(5, np.ones((1, 2), np.float32)))
    assert prediction is not None and prediction.info.version == 5
    assert prediction.outputs["value"][0, 0] == pytest.approx(expected_value(5, [1, 1]), 1e-6)
    with pytest.raises(AdminError, match="no retained version older") as caught:
        retained.rollback()
    assert caught.value.status == 409
    with pytest.raises(AdminError, match="version 9 is not retained"):
        retained.pin(9)

    state = retained.unpin()
    assert (state["live"], state["pinned"], cache.read_pin()) == ("5", None, None)
    _load(retained, 6)
    assert retained.versions() == [6, 5] and slot.info.version == 6
    state = retained.rollback()
    assert (state["live"], state["pinned"], cache.read_pin()) == ("5", "5", 5)


def test_a_bad_snapshot_is_neither_live_nor_retained_while_pinned(tmp_path: Path) -> None:
    retained, slot, _ = _versions(tmp_path)
    _load(retained, 1)
    retained.pin(1)
    assert slot.info is not None and slot.info.version == 1
    tensors = version_weights(tiny_regression_model(2), 2)
    next(iter(tensors.values())).view(-1)[0] = float("nan")
    with pytest.raises(SnapshotRejected):
        retained.load(tensors, SnapshotHeader(2, "r", created_at=2.0))
    assert retained.versions() == [1]


def test_a_recorded_pin_whose_version_is_gone_is_dropped(tmp_path: Path) -> None:
    SnapshotCache(tmp_path, settings_hash="h").write_pin(7)
    retained, slot, cache = _versions(tmp_path)
    _load(retained, 5)
    assert not slot.ready and not retained.settled()  # 5 is retained while 7 is awaited
    retained.settle()
    assert slot.info is not None and slot.info.version == 5
    assert retained.state()["pinned"] is None and cache.read_pin() is None
