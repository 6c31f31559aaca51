"""Record fingerprints, where they are stored (trainer checkpoints, join state files), the one
partitioning rule, and how the join reports a label placed by another rule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from streamtrain import metrics
from streamtrain.checkpoint import CheckpointStore, TrainerState
from streamtrain.join.label_routing import LabelRouting
from streamtrain.join.partition_state import DeadLetter, JoinPolicy, PartitionState, SourceRecord
from streamtrain.join.state_file import read_state, write_state
from streamtrain.kafka.partitioner import partition_for
from streamtrain.sample.record_mark import RecordMark, mark_of, marks_from_json
from streamtrain.sample.spec import SampleSpec
from tests.metrics_scrape import current


def _record(offset: int = 3, value: bytes = b"v", stamp: int = 1_700_000_000_000) -> SourceRecord:
    return SourceRecord("labels", 1, offset, stamp, b"k", value, ())


def test_a_mark_tells_which_field_differs_and_round_trips_through_json() -> None:
    mark = mark_of(_record())
    assert mark.differs(mark_of(_record())) is None
    why = mark.differs(mark_of(_record(value=b"other", stamp=5)))
    assert why is not None and "timestamp, value digest differ" in why and "offset 3" in why
    assert RecordMark.from_json(json.loads(json.dumps(mark.to_json()))) == mark
    assert mark_of(SourceRecord("t", 0, 0, -1, None, None, ())).key_sha256 is None


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ([], "JSON object"),
        ({"offset": -1, "timestamp": 0}, "offset -1"),
        ({"offset": True, "timestamp": 0}, "offset True"),
        ({"offset": 1, "timestamp": "x"}, "timestamp 'x'"),
        ({"offset": 1, "timestamp": 0, "value_sha256": "zz"}, "value_sha256 'zz'"),
    ],
)
def test_a_malformed_stored_mark_is_refused_naming_the_field(doc: object, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        RecordMark.from_json(doc)
    with pytest.raises(ValueError, match="partition 'p'"):
        marks_from_json({"p": mark_of(_record()).to_json()})


def _store(tmp_path: Path) -> tuple[CheckpointStore, torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(2, 1)
    return CheckpointStore(tmp_path, keep=2), model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_checkpoints_keep_the_marks_and_older_ones_still_load(tmp_path: Path) -> None:
    store, model, opt = _store(tmp_path)
    mark = mark_of(_record(offset=79))
    state = TrainerState(step=5, samples_seen=80, run_id="r", offsets={0: 80}, model_settings={})
    state.marks = {0: mark}
    path = store.save(state, model, opt)
    loaded = store.load_latest(model, opt)
    assert loaded is not None and loaded.marks == {0: mark} and loaded.extra == {}
    # A checkpoint from before fingerprints: no extra.log_marks, same format number.
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"] = {}
    meta_path.write_text(json.dumps(meta))
    older = store.load_latest(model, opt)
    assert older is not None and older.marks == {} and older.offsets == {0: 80}


def test_a_checkpoint_with_malformed_marks_is_skipped_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, model, opt = _store(tmp_path)
    state = TrainerState(step=5, samples_seen=80, run_id="r", offsets={0: 80}, model_settings={})
    meta_path = store.save(state, model, opt) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"]["log_marks"] = {"0": {"offset": "79"}}
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        assert store.load_latest(model, opt) is None
    (line,) = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert "extra" in line and "offset '79'" in line and "\n" not in line


def test_join_state_files_keep_the_input_marks_and_older_files_load(tmp_path: Path) -> None:
    policy = JoinPolicy(SampleSpec(feature_shape=(2,), task="binary"), window_s=30.0)
    state = PartitionState(0, policy)
    state.add_label(SourceRecord("labels", 0, 6, 1_000, b"r1", b"junk", ()))
    assert state.labels_mark == mark_of(SourceRecord("labels", 0, 6, 1_000, b"r1", b"junk", ()))
    path = tmp_path / "p0.safetensors"
    write_state(path, state, {0: 0})
    loaded = read_state(path, policy)
    assert loaded is not None
    assert loaded.state.labels_mark == state.labels_mark and loaded.state.predictions_mark is None


def test_partition_for_is_the_java_clients_murmur2() -> None:
    # Kafka's UtilsTest.testMurmur2 vectors (signed Java ints), then the positive-mod rule.
    assert partition_for(b"21", 2**31 - 1) == (-973932308 & 0x7FFFFFFF) % (2**31 - 1)
    assert partition_for(b"foobar", 1000) == (-790332482 & 0x7FFFFFFF) % 1000
    assert partition_for(b"abc", 7) == 479470107 % 7
    with pytest.raises(ValueError, match="at least 1"):
        partition_for(b"k", 0)


class _Group:
    def partition_count(self, topic: str) -> int:
        return 2


def test_a_label_on_the_wrong_partition_is_counted_warned_once_and_dead_lettered_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    routing = LabelRouting("labels", lambda: _Group(), clock=lambda: now[0])  # type: ignore[arg-type, return-value]
    keys = [f"r-{i}".encode() for i in range(20)]
    wrong = [k for k in keys if partition_for(k, 2) != 0]
    right = [k for k in keys if partition_for(k, 2) == 0]
    assert wrong and right
    before = current(metrics.JOIN_MISROUTED_LABELS)
    with caplog.at_level(logging.WARNING):
        for key in keys:
            routing.arrived(SourceRecord("labels", 0, 0, 0, key, b"{}", ()))
    assert current(metrics.JOIN_MISROUTED_LABELS) - before == len(wrong)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "partitioner=murmur2_random" in warnings[0]
    lost = DeadLetter(SourceRecord("labels", 0, 0, 0, wrong[0], b"{}", ()), "unknown_id", "x")
    assert routing.dead_letter(lost).reason == "wrong_partition"
    fine = DeadLetter(SourceRecord("labels", 0, 0, 0, right[0], b"{}", ()), "unknown_id", "x")
    assert routing.dead_letter(fine).reason == "unknown_id"
