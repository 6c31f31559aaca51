"""WeightSlot: versions only forward, rejections keep the live weights (a poisoned mapped
base too), standby reuse, drain."""

from __future__ import annotations

import tempfile
import threading

import pytest
import torch
from torch import nn

from streamtrain.metrics import SERVE_REJECTED_SNAPSHOTS
from streamtrain.serve.weights.slot import NotReady, SnapshotRejected, StandbyBusy, WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from streamtrain.snapshot.mapped import MappedPayload
from streamtrain.snapshot.payload import encode_state
from tests.metrics_scrape import current
from tests.threads import Workers
from tests.version_fixtures import (
    expected_value,
    tiny_regression_model,
    version_weights,
)


def _slot(**kwargs: float) -> WeightSlot:
    return WeightSlot(tiny_regression_model(4), **kwargs)


def _answer(slot: WeightSlot) -> tuple[int, float]:
    with slot.acquire() as lease, torch.inference_mode():
        return lease.info.version, float(lease.model(torch.ones(1, 4)).item())


def _rejections(reason: str) -> float:
    return current(SERVE_REJECTED_SNAPSHOTS, reason=reason)


def test_not_ready_before_first_snapshot() -> None:
    slot = _slot()
    assert not slot.ready and slot.info is None
    with pytest.raises(NotReady, match="first valid snapshot"), slot.acquire():
        pass


def test_versions_only_move_forward() -> None:
    slot = _slot()
    model = tiny_regression_model(4)
    slot.load(
        version_weights(model, 10), SnapshotHeader(10, "a", data_watermark=123.0, created_at=100.0)
    )
    assert slot.info is not None and slot.info.data_watermark == 123.0
    before = _rejections("stale")
    # Older versions of any run, and version 10 taken earlier by another run, are stale.
    for older in (10, 9, 0):
        with pytest.raises(SnapshotRejected, match=r"not newer than the live version 10"):
            slot.load(version_weights(model, older), SnapshotHeader(older, "b", created_at=50.0))
    assert _rejections("stale") == before + 3
    assert _answer(slot) == pytest.approx((10, expected_value(10, [1.0] * 4)))
    # A different run with a newer version is accepted: versions are compared across runs.
    slot.load(version_weights(model, 11), SnapshotHeader(11, "b", created_at=1.0))
    assert _answer(slot)[0] == 11
    # On equal versions the later snapshot wins (snapshot_order), whatever the run.
    slot.load(version_weights(model, 11), SnapshotHeader(11, "a", created_at=2.0))
    assert slot.info is not None and slot.info.run_id == "a"


@pytest.mark.parametrize(
    ("tensors", "reason", "message"),
    [
        ({"0.weight": torch.ones(1, 5), "0.bias": torch.ones(1)}, "shape_mismatch", r"\[1, 5\]"),
        ({"0.weight": torch.ones(1, 4)}, "shape_mismatch", r"missing \['0.bias'\]"),
        (
            {"0.weight": torch.ones(1, 4), "0.bias": torch.ones(1), "extra": torch.ones(1)},
            "shape_mismatch",
            r"unexpected \['extra'\]",
        ),
        (
            {"0.weight": torch.full((1, 4), float("nan")), "0.bias": torch.ones(1)},
            "non_finite",
            "NaN or Inf",
        ),
    ],
)
def test_rejected_snapshot_keeps_live_weights(
    tensors: dict[str, torch.Tensor], reason: str, message: str
) -> None:
    slot = _slot()
    slot.load(version_weights(tiny_regression_model(4), 3), SnapshotHeader(3, "r"))
    before = _rejections(reason)
    with pytest.raises(SnapshotRejected, match=message) as caught:
        slot.load(tensors, SnapshotHeader(4, "r"))
    assert caught.value.reason == reason
    assert _rejections(reason) == before + 1
    assert _answer(slot) == pytest.approx((3, expected_value(3, [1.0] * 4)))


def test_standby_reused_without_new_allocations() -> None:
    slot = _slot()
    model = tiny_regression_model(4)
    pointers = slot.parameter_pointers()
    for version in range(1, 101):
        slot.load(version_weights(model, version), SnapshotHeader(version, "r"))
        assert _answer(slot) == pytest.approx((version, expected_value(version, [1.0] * 4)))
    assert slot.parameter_pointers() == pointers


def test_in_flight_request_blocks_loader_not_requests() -> None:
    # The drain's timeout is a hang's bound: the loader must outwait the held request across
    # the checks below, which a niced worker on a loaded machine can take seconds over.
    slot = _slot(drain_timeout_s=60.0)
    model = tiny_regression_model(4)
    slot.load(version_weights(model, 1), SnapshotHeader(1, "r"))
    slot.load(version_weights(model, 2), SnapshotHeader(2, "r"))
    loaded = threading.Event()
    with slot.acquire() as held:  # a slow request on version 2
        assert held.info.version == 2
        slot.load(version_weights(model, 3), SnapshotHeader(3, "r"))  # into version 1's copy
        # Version 4 would overwrite version 2's copy, which the held request still uses.

        def load_4() -> None:
            slot.load(version_weights(model, 4), SnapshotHeader(4, "r"))
            loaded.set()

        loader = Workers()  # a failed load fails the test at join
        loader.start(load_4)
        assert not loaded.wait(0.3)
        # Requests never wait for the load: they get version 3 while the loader is blocked.
        assert _answer(slot) == pytest.approx((3, expected_value(3, [1.0] * 4)))
        with torch.inference_mode():
            out = float(held.model(torch.ones(1, 4)).item())
        assert out == pytest.approx(expected_value(2, [1.0] * 4))
    loader.join(60.0)
    assert loaded.is_set()
    assert _answer(slot)[0] == 4


def test_loader_gives_up_after_drain_timeout() -> None:
    slot = _slot(drain_timeout_s=0.05)
    model = tiny_regression_model(4)
    slot.load(version_weights(model, 1), SnapshotHeader(1, "r"))
    with slot.acquire():
        slot.load(version_weights(model, 2), SnapshotHeader(2, "r"))
        with slot.acquire(), pytest.raises(StandbyBusy, match="still in use"):
            # Both copies are held now: version 3 cannot be written anywhere.
            slot.load(version_weights(model, 3), SnapshotHeader(3, "r"))
    assert _answer(slot)[0] == 2
    slot.load(version_weights(model, 3), SnapshotHeader(3, "r"))  # retry works once drained
    assert _answer(slot)[0] == 3


def test_requests_run_again_after_a_shared_table_write() -> None:
    # Rule 5 holds requests back while a shared table is written; the hold must end with it.
    model = torch.nn.Sequential(torch.nn.Embedding(4, 2), torch.nn.Flatten(), torch.nn.Linear(2, 1))
    slot = WeightSlot(model, drain_timeout_s=5.0, shared=frozenset({"0.weight"}))
    for version in (1, 2):
        state = {k: torch.full_like(v, float(version)) for k, v in model.state_dict().items()}
        slot.load(state, SnapshotHeader(version, "r"))
        done = threading.Event()

        def request(done: threading.Event = done) -> None:
            with slot.acquire():
                done.set()

        threading.Thread(target=request, daemon=True).start()
        assert done.wait(timeout=20), f"a request still waits after the write of version {version}"
        with slot.acquire() as lease:
            assert lease.info.version == version
            assert float(lease.model[0].weight[0, 0]) == version


def _mapped_table(table: torch.Tensor) -> dict[str, torch.Tensor]:
    payload, _ = encode_state({"weight": table})
    with tempfile.TemporaryFile() as file:  # the mapping keeps a descriptor of its own
        file.write(payload)
        return MappedPayload(file, len(payload)).tensors


def test_a_nan_in_the_last_block_of_a_mapped_shared_table_writes_nothing() -> None:
    """A base read from its mapped file, its row-sparse table held once by both copies (so
    written in place, live): a NaN in the table's very last element, past several 4 MiB
    blocks, is refused before any block is written; the live table is exactly as before."""
    slot = WeightSlot(nn.Embedding(50_000, 64), shared=frozenset({"weight"}))  # 12.8 MB
    first = torch.randn(50_000, 64)
    slot.load(_mapped_table(first), SnapshotHeader(1, "r"))
    poisoned = torch.randn(50_000, 64)
    poisoned[-1, -1] = float("nan")
    before = _rejections("non_finite")
    with pytest.raises(SnapshotRejected, match="NaN or Inf") as caught:
        slot.load(_mapped_table(poisoned), SnapshotHeader(2, "r"))
    assert caught.value.reason == "non_finite" and _rejections("non_finite") == before + 1
    with slot.acquire() as lease:
        assert lease.info.version == 1
        assert torch.equal(lease.model.weight, first)
