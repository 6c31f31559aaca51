"""A new replica's base written into the standby as its chunks arrive (issue 26, slot rule 7):
what a fill writes is made live only whole and verified; everything else falls back to the
copy after the read, or leaves the replica not ready."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from streamtrain.metrics import SERVE_STREAMED_LOADS
from streamtrain.serve.weights import slot as slot_module
from streamtrain.serve.weights.slot import SnapshotRejected, WeightSlot
from streamtrain.serve.weights.standby_fill import StandbyFill
from streamtrain.serve.weights.unfilled import initial_draws_skipped
from streamtrain.snapshot.manifest import SnapshotManifest
from streamtrain.snapshot.payload import encode_state, sha256_hex, split_chunks
from streamtrain.snapshot.spool import Chunk, Spool
from streamtrain.snapshot.verify import ReceivedSnapshot, RejectedSnapshot, verify_spool
from streamtrain.train.row_tracker import row_sparse_parameters
from tests.delta_fixtures import build_model, model_state
from tests.metrics_scrape import current

PARAMS = {"rows": 300, "dim": 8, "id_features": 2}
CHUNK = 1000  # not a multiple of 4: chunks split float32 elements between them


def _replica() -> WeightSlot:
    """A new replica's slot, its model built as a server builds it (untouched pages)."""
    with initial_draws_skipped():
        model = build_model(0, PARAMS)
    return WeightSlot(model, shared=frozenset(row_sparse_parameters(model)))


def _manifest(payload: bytes, infos: list, version: int) -> SnapshotManifest:  # type: ignore[type-arg]
    return SnapshotManifest(
        model_name="m", settings_hash="a" * 64, run_id="run", version=version,
        created_at=0.0, data_watermark=None, offsets={}, tensors=infos,
        size_bytes=len(payload), sha256=sha256_hex(payload),
        chunk_count=math.ceil(len(payload) / CHUNK), chunk_bytes=CHUNK, first_chunk_offset=0,
    )  # fmt: skip


def _receive(
    slot: WeightSlot, state: dict[str, torch.Tensor], version: int, bend: str = "intact"
) -> tuple[ReceivedSnapshot | RejectedSnapshot, StandbyFill | None]:
    """The subscriber's catch-up read of one base, its manifest screened first: a spool
    with the slot's fill, the chunks in order (or bent), then verification."""
    payload, infos = encode_state(state)
    manifest = _manifest(payload, infos, version)
    pieces = [bytes(p) for p in split_chunks(payload, CHUNK)]
    sends = [(i, p, sha256_hex(p)) for i, p in enumerate(pieces)]
    middle = len(sends) // 2
    if bend == "altered":  # a byte flipped after hashing
        flipped = bytearray(pieces[middle])
        flipped[3] ^= 0xFF
        sends[middle] = (middle, bytes(flipped), sends[middle][2])
    elif bend == "missing":
        del sends[middle]
    elif bend == "swapped":  # each under a digest of what it carries: only the payload's fails
        sends[middle], sends[middle + 1] = (
            (middle, pieces[middle + 1], sha256_hex(pieces[middle + 1])),
            (middle + 1, pieces[middle], sha256_hex(pieces[middle])),
        )
    elif bend == "reordered":
        sends[middle], sends[middle + 1] = sends[middle + 1], sends[middle]
    spool = Spool(max_bytes=len(payload) + CHUNK)
    fill = slot.fill_for(manifest)
    spool.fill = fill
    try:
        for index, data, digest in sends:
            spool.add(Chunk(index, len(pieces), data), digest)
        result = verify_spool(manifest, spool)
    finally:
        spool.close()
    if isinstance(result, ReceivedSnapshot):
        result = dataclasses.replace(result, filled=fill)
    assert fill is None or isinstance(fill, StandbyFill)
    return result, fill


def _load(slot: WeightSlot, result: ReceivedSnapshot | RejectedSnapshot) -> None:
    assert isinstance(result, ReceivedSnapshot), result
    slot.load(result.tensors, result.manifest.header, filled=result.filled)


def _serves(slot: WeightSlot, state: dict[str, torch.Tensor]) -> bool:
    with slot.acquire() as lease:
        held = lease.model.state_dict()
        return all(torch.equal(held[k], state[k]) for k in state)


def _trained(seed: int) -> dict[str, torch.Tensor]:
    return model_state(build_model(seed, PARAMS))


def test_a_new_replica_swaps_in_the_filled_standby_without_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slot = _replica()
    state = _trained(1)
    streamed = current(SERVE_STREAMED_LOADS)
    result, fill = _receive(slot, state, 1)
    assert fill is not None and fill.complete and fill.problem is None
    # Written during the read: the standby already holds the base, nothing is live yet.
    assert not slot.ready
    standby = slot._standby.targets
    assert all(torch.equal(standby[k], state[k]) for k in state)

    def no_copy(*args: object, **kwargs: object) -> None:
        raise AssertionError("the filled standby was copied into again")

    monkeypatch.setattr(slot_module, "copy_released", no_copy)
    monkeypatch.setattr(
        slot_module, "apply_rows", lambda targets, whole, rows: no_copy() if whole else None
    )
    _load(slot, result)
    assert slot.ready and slot.info is not None and slot.info.version == 1
    assert _serves(slot, state)  # bit for bit the trainer's
    assert current(SERVE_STREAMED_LOADS) == streamed + 1


@pytest.mark.parametrize("bend", ["altered", "missing", "swapped"])
def test_a_bad_chunk_midway_leaves_the_replica_not_ready_and_a_later_base_loads(bend: str) -> None:
    slot = _replica()
    streamed = current(SERVE_STREAMED_LOADS)
    bad, fill = _receive(slot, _trained(1), 1, bend)
    assert isinstance(bad, RejectedSnapshot)
    assert (
        bad.reason == {"altered": "checksum", "missing": "incomplete", "swapped": "checksum"}[bend]
    )
    assert fill is not None and not slot.ready  # never offered to the slot: nothing to serve
    if bend != "swapped":  # a swapped chunk passes its own digest: only the payload's fails
        assert not fill.complete
    good = _trained(2)
    result, fill = _receive(slot, good, 2)
    assert fill is not None and fill.complete
    _load(slot, result)
    assert _serves(slot, good)  # every byte rewritten, none left of the bad base
    assert current(SERVE_STREAMED_LOADS) == streamed + 1


def test_nan_midway_is_refused_and_the_next_base_loads() -> None:
    slot = _replica()
    poisoned = _trained(1)
    table = next(k for k in poisoned if poisoned[k].dim() == 2 and poisoned[k].shape[0] == 300)
    poisoned[table][150, 3] = float("nan")
    result, fill = _receive(slot, poisoned, 1)
    assert fill is not None and not fill.complete and "NaN" in (fill.problem or "")
    with pytest.raises(SnapshotRejected) as refused:
        _load(slot, result)  # the ordinary check runs, and refuses
    assert refused.value.reason == "non_finite" and not slot.ready
    good = _trained(2)
    result, _ = _receive(slot, good, 2)
    _load(slot, result)
    assert _serves(slot, good)


def test_names_shapes_dtypes_are_checked_before_anything_is_written() -> None:
    slot = _replica()
    before = {k: v.clone() for k, v in slot._standby.targets.items()}
    other = model_state(build_model(1, {**PARAMS, "dim": 4}))  # another model's shapes
    result, fill = _receive(slot, other, 1)
    assert fill is not None and "not the model's" in (fill.problem or "")
    assert all(torch.equal(slot._standby.targets[k], before[k]) for k in before)
    with pytest.raises(SnapshotRejected) as refused:
        _load(slot, result)
    assert refused.value.reason == "shape_mismatch" and not slot.ready


def test_chunks_out_of_order_load_after_the_read_as_before() -> None:
    slot = _replica()
    state = _trained(1)
    streamed = current(SERVE_STREAMED_LOADS)
    result, fill = _receive(slot, state, 1, "reordered")
    assert fill is not None and not fill.complete
    _load(slot, result)
    assert _serves(slot, state)
    assert current(SERVE_STREAMED_LOADS) == streamed  # the copy after the read


def test_a_fill_never_writes_live_weights() -> None:
    """No fill once something is live; a fill made before another load is retired by it,
    so its later chunks cannot reach the copy that load made live."""
    slot = _replica()
    first, second = _trained(1), _trained(2)
    payload, infos = encode_state(second)
    stale_fill = slot.fill_for(_manifest(payload, infos, 2))
    assert isinstance(stale_fill, StandbyFill)
    result, _ = _receive(slot, first, 1, "reordered")  # loaded the ordinary way
    _load(slot, result)
    assert slot.fill_for(_manifest(payload, infos, 3)) is None
    for index, piece in enumerate(split_chunks(payload, CHUNK)):
        stale_fill.write(index, bytes(piece))
    assert stale_fill.problem is not None and not stale_fill.complete
    assert _serves(slot, first)


def test_a_newer_fill_retires_the_older() -> None:
    slot = _replica()
    state = _trained(1)
    payload, infos = encode_state(state)
    older = slot.fill_for(_manifest(payload, infos, 1))
    result, newer = _receive(slot, state, 2)
    assert isinstance(older, StandbyFill) and newer is not None and newer.complete
    older.write(0, bytes(split_chunks(payload, CHUNK)[0]))
    assert older.problem is not None
    _load(slot, result)
    assert _serves(slot, state)
