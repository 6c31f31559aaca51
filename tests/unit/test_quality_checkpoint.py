"""The served-quality pairing in the join's state file: a pairing restored from a checkpoint
and fed the rest of the stream ends where one fed the whole stream without a stop; the
partitions' tallies add up to one book's; a damaged quality part is one clear error."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load, save

from streamtrain.join.partition_state import JoinPolicy, PartitionState
from streamtrain.join.state_file import StateFileError, read_state, write_state
from streamtrain.quality.books import TallyReport, VersionBooks, merged
from streamtrain.quality.pairing import ServedQuality
from streamtrain.quality.partitions import PartitionedQuality
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.label_record import Label
from streamtrain.wire.prediction_record import ARMS, PredictionRecord

BINARY = SampleSpec((2,), "binary")
REGRESSION = SampleSpec((2,), "regression", target_dim=2)
Event = tuple[str, str, object]


def _events(spec: SampleSpec, count: int, seed: int) -> list[Event]:
    """Rows of versions 1..6 on every arm, replays, labels before and after their rows,
    second labels; in a shuffled but seeded order."""
    rng = random.Random(seed)
    events: list[Event] = []
    for i in range(count):
        rid = f"r{i}"
        version = 1 + i * 6 // count
        for arm in rng.sample(ARMS, rng.randint(1, 2)):
            outputs = _outputs(spec, rng)
            row = PredictionRecord(rid, 100.0 + i, version, "run", outputs, b"", arm)
            events += [("row", rid, row)] * rng.choice((1, 1, 1, 2))  # 2: a replayed record
        if rng.random() < 0.8:
            events += [("label", rid, _label(spec, rng)) for _ in range(rng.choice((1, 1, 2)))]
    # labels drift a little before or after their rows: both orders occur
    keyed = [(n + rng.uniform(-3, 3) * (e[0] == "label"), e) for n, e in enumerate(events)]
    return [e for _, e in sorted(keyed, key=lambda item: item[0])]


def _outputs(spec: SampleSpec, rng: random.Random) -> tuple[float, ...]:
    if spec.is_classification:
        p = rng.uniform(0.01, 0.99)
        return (1 - p, p)
    return (rng.gauss(0, 1), rng.gauss(0, 1))


def _label(spec: SampleSpec, rng: random.Random) -> Label:
    if spec.is_classification:
        return rng.randint(0, 1)
    return (rng.gauss(0, 1), rng.gauss(0, 1))


def _feed(pairs: ServedQuality, events: list[Event]) -> None:
    for kind, rid, value in events:
        if kind == "row":
            assert isinstance(value, PredictionRecord)
            pairs.prediction(value)
        else:
            pairs.label(rid, value)  # type: ignore[arg-type]


def _quality(spec: SampleSpec, keep: int = 3) -> PartitionedQuality:
    return PartitionedQuality(VersionBooks(spec, keep, window_s=40.0), 500, 300)


def _report(pairs: ServedQuality) -> dict[tuple[str, str], TallyReport]:
    return {(r.version, r.arm): r for r in pairs.books.report()}


def _assert_same(
    got: dict[tuple[str, str], TallyReport], want: dict[tuple[str, str], TallyReport]
) -> None:
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        assert (g.served, g.labelled) == (w.served, w.labelled), key
        for name in ("loss_sum", "loss_squares", "correct", "abs_error_sum", "squared_error_sum"):
            assert getattr(g, name) == pytest.approx(getattr(w, name), rel=1e-12), (key, name)
        for name in ("rows", "log_loss", "accuracy", "auc", "mae", "rmse"):
            a, b = getattr(g.figures, name), getattr(w.figures, name)
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12), name


@pytest.mark.parametrize("spec", [BINARY, REGRESSION], ids=["binary", "regression"])
@pytest.mark.parametrize("stop", [0.3, 0.7])
def test_a_pairing_restored_from_its_checkpoint_ends_as_an_uninterrupted_one(
    tmp_path: Path, spec: SampleSpec, stop: float
) -> None:
    events = _events(spec, 400, seed=11)
    quality = _quality(spec)
    whole = quality.fresh()
    _feed(whole, events)
    cut = int(len(events) * stop)
    before = quality.fresh()
    _feed(before, events[:cut])
    assert before.waiting() and before.remembered()  # rows wait, labels are remembered
    path = tmp_path / "p-0.safetensors"
    write_state(path, PartitionState(0, JoinPolicy(spec)), {0: 0}, before)
    loaded = read_state(path, JoinPolicy(spec), quality)
    assert loaded is not None and loaded.quality is not None
    after = loaded.quality
    assert after.waiting() == before.waiting()
    assert after.remembered() == before.remembered()
    assert after.seen() == before.seen()
    _assert_same(_report(after), _report(before))
    _feed(after, events[cut:])
    _assert_same(_report(after), _report(whole))
    assert any(r.labelled for r in after.books.report() if r.version == "older")


def test_partitions_add_up_to_one_book_fed_every_row() -> None:
    events = _events(BINARY, 600, seed=5)
    quality = _quality(BINARY, keep=2)
    whole = quality.fresh()
    _feed(whole, events)
    parts = {0: quality.fresh(), 1: quality.fresh()}
    for event in events:  # each id wholly in one partition, as the producers key them
        _feed(parts[int(event[1][1:]) % 2], [event])
    for p, pairs in parts.items():
        quality.take(p, pairs)
    total = merged(whole.books, [p.books for p in parts.values()])
    got = {(r.version, r.arm): r for r in total.report()}
    _assert_same(got, _report(whole))
    assert {s.version for s in quality.series()} == {"5", "6", "older"}


def test_a_file_without_a_pairing_loads_none_and_off_reads_none(tmp_path: Path) -> None:
    path = tmp_path / "p-0.safetensors"
    write_state(path, PartitionState(0, JoinPolicy(BINARY)), {0: 0})
    loaded = read_state(path, JoinPolicy(BINARY), _quality(BINARY))
    assert loaded is not None and loaded.quality is None
    write_state(path, PartitionState(0, JoinPolicy(BINARY)), {0: 0}, _quality(BINARY).fresh())
    off = read_state(path, JoinPolicy(BINARY), PartitionedQuality(None))
    assert off is not None and off.quality is None


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("quality_row_arms", lambda t: np.full_like(t, 9)),
        ("quality_row_outputs_lengths", lambda t: t + 1),
        ("quality_tally_window_rows", lambda t: t * 2 + 1),
        ("quality_label_ids_lengths", lambda t: -t),
    ],
)
def test_a_damaged_pairing_is_one_clear_error(tmp_path: Path, name: str, damage: object) -> None:
    pairs = _quality(BINARY).fresh()
    _feed(pairs, _events(BINARY, 50, seed=3))
    path = tmp_path / "p-0.safetensors"
    write_state(path, PartitionState(0, JoinPolicy(BINARY)), {0: 0}, pairs)
    data = path.read_bytes()
    tensors = load(data)
    header = data[8 : 8 + int.from_bytes(data[:8], "little")]
    metadata = json.loads(header)["__metadata__"]
    tensors[name] = damage(tensors[name])  # type: ignore[operator]
    path.write_bytes(save(tensors, metadata=metadata))
    with pytest.raises(StateFileError, match="move it away"):
        read_state(path, JoinPolicy(BINARY), _quality(BINARY))
