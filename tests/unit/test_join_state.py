"""The join rules of one partition pair, and their state file, without a broker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamtrain.join.partition_state import (
    DeadLetter,
    Emit,
    Expired,
    JoinPolicy,
    PartitionState,
    SourceRecord,
)
from streamtrain.join.state_file import StateFileError, read_state, write_state
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire import decode_binary, encode_binary
from streamtrain.wire.label_record import encode_label_json
from streamtrain.wire.prediction_record import PredictionRecord, encode_prediction

SPEC = SampleSpec(feature_shape=(3,), task="binary")
T0 = 1_700_000_000.0


def _policy(**overrides: object) -> JoinPolicy:
    return JoinPolicy(SPEC, **{"window_s": 30.0, "label_wait_s": 2.0, **overrides})  # type: ignore[arg-type]


def _features(i: int) -> list[float]:
    return [i + 0.1, -i - 0.2, float(np.float32(1 / (i + 3)))]


def _prediction(rid: str, served_at: float, offset: int, i: int = 1) -> SourceRecord:
    sample = encode_binary(SPEC, _features(i), 0, timestamp=served_at)
    value = encode_prediction(PredictionRecord(rid, served_at, 3, "run", (0.4, 0.6), sample))
    return SourceRecord("preds", 0, offset, int(served_at * 1000), rid.encode(), value, ())


def _label(rid: str, at: float, offset: int, label: object = 1) -> SourceRecord:
    value = encode_label_json(rid, label)
    return SourceRecord("labels", 0, offset, int(at * 1000), rid.encode(), value, ())


def _state(**overrides: object) -> PartitionState:
    return PartitionState(0, _policy(**overrides), wall_clock=lambda: T0 + 1000)


def test_a_label_after_its_prediction_joins_with_the_served_features() -> None:
    state = _state()
    assert state.add_prediction(_prediction("a", T0, 0, i=7)) == []
    (emit,) = state.add_label(_label("a", T0 + 4, 0))
    assert isinstance(emit, Emit) and emit.outcome == "joined"
    assert emit.label_delay_s == pytest.approx(4.0)
    served = encode_binary(SPEC, _features(7), 0, timestamp=T0)
    assert emit.value[28:] == served[28:]  # features after the 4+8+4+8 byte head: bit for bit
    decoded = decode_binary(SPEC, [emit.value], np.zeros(1))
    assert decoded.labels.tolist() == [1]
    assert decoded.timestamps.tolist() == [pytest.approx(T0 + 4, abs=1e-3)]
    assert (state.predictions_offset, state.labels_offset) == (1, 1)


def test_a_label_before_its_prediction_waits_and_then_joins() -> None:
    state = _state()
    assert state.add_label(_label("b", T0 + 1, 0)) == []
    assert "b" in state.labels
    (emit,) = state.add_prediction(_prediction("b", T0, 0))
    assert isinstance(emit, Emit) and emit.request_id == "b"
    assert not state.labels and not state.predictions


def test_an_unknown_label_is_dead_lettered_once_the_prediction_log_is_read_past_it() -> None:
    state = _state()
    state.add_label(_label("ghost", T0, 0))
    state.saw_predictions_until(T0 + 1.9)
    assert state.advance() == []
    state.saw_predictions_until(T0 + 2.0)
    (dead,) = state.advance()
    assert isinstance(dead, DeadLetter) and dead.reason == "unknown_id"
    assert dead.record.key == b"ghost"


def test_duplicate_and_late_labels_are_dead_lettered_with_their_reason() -> None:
    state = _state()
    state.add_prediction(_prediction("joined", T0, 0))
    state.add_prediction(_prediction("expired", T0, 1))
    state.add_label(_label("joined", T0 + 1, 0))
    state.saw_labels_until(T0 + 30)
    (expired,) = state.advance()
    assert isinstance(expired, Expired) and not expired.emitted and expired.cause == "window"
    (dup,) = state.add_label(_label("joined", T0 + 31, 1, label=0))
    (late,) = state.add_label(_label("expired", T0 + 31, 2))
    assert isinstance(dup, DeadLetter) and dup.reason == "duplicate"
    assert isinstance(late, DeadLetter) and late.reason == "late"
    state.add_label(_label("waiting", T0 + 31, 3))
    (second,) = state.add_label(_label("waiting", T0 + 31, 4))
    assert isinstance(second, DeadLetter) and second.reason == "duplicate"


def test_a_label_stamped_in_the_future_does_not_expire_predictions() -> None:
    state = PartitionState(0, _policy(), wall_clock=lambda: T0 + 5)
    state.add_prediction(_prediction("open", T0, 0))
    state.add_label(_label("other", T0 + 3600, 0))  # a producer clock an hour ahead
    assert state.labels_seen_until == T0 + 5
    assert not any(isinstance(a, Expired) for a in state.advance())
    assert "open" in state.predictions


def test_the_default_label_policy_emits_expired_predictions() -> None:
    state = _state(default_label=0, default_weight=0.5)
    state.add_prediction(_prediction("quiet", T0, 0, i=4))
    state.saw_labels_until(T0 + 29.9)
    assert state.advance() == []
    state.saw_labels_until(T0 + 30.0)
    expired, emit = state.advance()
    assert isinstance(expired, Expired) and expired.emitted
    assert isinstance(emit, Emit) and emit.outcome == "default_label"
    decoded = decode_binary(SPEC, [emit.value], np.zeros(1))
    assert decoded.labels.tolist() == [0] and decoded.weights.tolist() == [0.5]
    assert emit.value[28:] == encode_binary(SPEC, _features(4), 0)[28:]


def test_resolved_ids_are_forgotten_after_remember_s() -> None:
    state = _state(remember_s=10.0)
    state.add_prediction(_prediction("x", T0, 0))
    state.add_label(_label("x", T0 + 1, 0))
    state.saw_labels_until(T0 + 30 + 9.99)
    state.advance()
    assert "x" in state.resolved
    state.saw_labels_until(T0 + 30 + 10)
    state.advance()
    assert "x" not in state.resolved


def test_resolved_ids_beyond_the_cap_are_forgotten_oldest_first() -> None:
    state = _state(max_remembered_ids=2)
    for i in range(3):
        state.add_prediction(_prediction(f"r{i}", T0, i))
        state.add_label(_label(f"r{i}", T0 + 1, i))
    assert list(state.resolved) == ["r1", "r2"]
    assert state.add_label(_label("r0", T0 + 2, 3)) == []  # no longer known: it waits
    (dup,) = state.add_label(_label("r2", T0 + 2, 4))
    assert isinstance(dup, DeadLetter) and dup.reason == "duplicate"


def test_pending_predictions_beyond_the_cap_are_evicted_by_the_policy() -> None:
    state = _state(max_pending_predictions=2, default_label=0)
    for i in range(3):
        actions = state.add_prediction(_prediction(f"p{i}", T0 + i, i))
    expired, emit = actions
    assert isinstance(expired, Expired) and expired.cause == "evicted"
    assert isinstance(emit, Emit) and emit.request_id == "p0"
    assert list(state.predictions) == ["p1", "p2"]


def test_invalid_records_are_dead_lettered_with_the_decode_reason() -> None:
    state = _state()
    (bad_label,) = state.add_label(_label("a", T0, 0, label=7))
    assert isinstance(bad_label, DeadLetter) and bad_label.reason == "bad_label"
    garbage = SourceRecord("preds", 0, 0, int(T0 * 1000), b"k", b"nonsense", ())
    (bad_pred,) = state.add_prediction(garbage)
    assert isinstance(bad_pred, DeadLetter) and bad_pred.reason == "undecodable"
    state.add_prediction(_prediction("twice", T0, 1))
    (again,) = state.add_prediction(_prediction("twice", T0, 2))
    assert isinstance(again, DeadLetter) and again.reason == "duplicate"


def test_ids_emitted_before_a_crash_are_not_emitted_again() -> None:
    state = _state(default_label=0)
    state.already_emitted = {"j": "joined", "d": "default_label"}
    state.add_prediction(_prediction("j", T0, 0))
    state.add_prediction(_prediction("d", T0, 1))
    assert state.add_label(_label("j", T0 + 1, 0)) == []
    (late,) = state.add_label(_label("d", T0 + 1, 1))  # it went out with the default label
    assert isinstance(late, DeadLetter) and late.reason == "late"
    assert not state.already_emitted
    assert state.resolved["j"].joined and not state.resolved["d"].joined


def test_state_file_round_trip(tmp_path: Path) -> None:
    state = _state()
    state.add_prediction(_prediction("open", T0, 0, i=2))
    state.add_prediction(_prediction("done", T0, 1))
    state.add_label(_label("done", T0 + 1, 0))
    waiting = _label("early", T0 + 2, 1, label=0)
    state.add_label(SourceRecord(*list(vars(waiting).values())[:6], (("h", b"\x00\xff"),)))
    state.already_emitted = {"e": "default_label"}
    state.saw_predictions_until(T0 + 1.5)
    path = tmp_path / "p-0.safetensors"
    assert write_state(path, state, {0: 12, 1: 40}) > 0
    loaded = read_state(path, state.policy)
    assert loaded is not None and loaded.samples_ends == {0: 12, 1: 40}
    back = loaded.state
    assert back.predictions == state.predictions
    assert back.resolved == state.resolved
    assert back.labels == state.labels
    assert back.already_emitted == state.already_emitted
    assert (back.predictions_offset, back.labels_offset) == (2, 2)
    assert back.predictions_seen_until == state.predictions_seen_until
    assert back.labels_seen_until == state.labels_seen_until
    assert read_state(tmp_path / "missing.safetensors", state.policy) is None


def test_an_empty_state_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "p-0.safetensors"
    write_state(path, _state(), {0: 0})
    loaded = read_state(path, _policy())
    assert loaded is not None and loaded.samples_ends == {0: 0}
    assert not loaded.state.predictions and not loaded.state.labels and not loaded.state.resolved


def test_a_corrupt_state_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "p-0.safetensors"
    write_state(path, _state(), {})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(StateFileError, match="move it away"):
        read_state(path, _policy())
