"""The join loop's checkpoint and ownership state machine (``join/joiner.py``), without Kafka.

The collaborators the joiner drives (samples producer, dead-letter sink, samples-topic reader,
group member) are doubles that record what was asked of them in order, so each step of the
docstring's orderings is checked by itself: the checkpoint's flush → ends → state file →
commit, the take-over's read-back, an outage's held partitions, a log that lost its samples.
The pairing rules are tested in ``test_join_state.py``; the whole join against a real broker
in ``tests/integration/test_join_*.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from streamtrain.join.joiner import JoinDeliveryError, Joiner, JoinTopics
from streamtrain.join.log_lost import JoinLogLost, OnLogLost
from streamtrain.join.partition_state import JoinPolicy, PartitionState
from streamtrain.join.samples_log import join_tag, moved_back
from streamtrain.join.state_file import read_state, state_path, write_state
from streamtrain.quality.books import VersionBooks
from streamtrain.quality.partitions import PartitionedQuality
from streamtrain.sample.spec import SampleSpec
from streamtrain.wire.prediction_record import PredictionRecord

POLICY = JoinPolicy(SampleSpec(feature_shape=(3,), task="binary"))
TOPICS = JoinTopics(predictions="preds", labels="labels", samples="samples")


class _SamplesOut:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.error: BaseException | None = None
        self.renewed = 0

    def emit(self, partition: int, emit: object) -> None:
        self.events.append("emit")

    def poll(self) -> None:
        return None

    def flush(self, timeout_s: float, give_up: Callable[[], bool] = lambda: False) -> None:
        self.events.append("flush samples")

    def renew(self) -> None:
        self.renewed += 1


class _DeadLetters:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def send(self, record: object, reject: object) -> None:
        self.events.append("dead letter")

    def flush(self, timeout: float = 30.0) -> None:
        self.events.append("flush dead letters")


class _SamplesLog:
    """The samples topic: its ends ``now``, the ids found after a start; ``fail`` raises."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.now: dict[int, int] = {0: 0}
        self.found: dict[str, dict[str, str]] = {}
        self.fail: Exception | None = None

    def ends(self) -> dict[int, int]:
        self.events.append("read ends")
        if self.fail is not None:
            raise self.fail
        return dict(self.now)

    def lost_since(self, checkpointed: Mapping[int, int]) -> str | None:
        return moved_back(TOPICS.samples, checkpointed, self.ends())

    def emitted_since(self, starts: Mapping[str, Mapping[int, int]]) -> dict[str, Any]:
        self.events.append("read back")
        return {tag: dict(self.found.get(tag, {})) for tag in starts}


class _Group:
    def __init__(self, events: list[str], state_dir: Path) -> None:
        self.events = events
        self.state_dir = state_dir
        self.assigned: tuple[int, ...] = ()
        self.commits: list[dict[tuple[str, int], int]] = []
        self.seeks: list[tuple[int, int, int]] = []

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        written = all(
            state_path(self.state_dir, TOPICS.predictions, p).exists() for _, p in offsets
        )
        self.events.append(f"commit (state files written: {written})")
        self.commits.append(dict(offsets))

    def seek(self, partition: int, predictions: int, labels: int) -> None:
        self.seeks.append((partition, predictions, labels))


class _Parts:
    def __init__(self, tmp_path: Path) -> None:
        self.events: list[str] = []
        self.samples = _SamplesOut(self.events)
        self.log = _SamplesLog(self.events)
        self.group = _Group(self.events, tmp_path)
        self.state_dir = tmp_path


def _joiner(
    tmp_path: Path, on_log_lost: OnLogLost = "fail", quality: PartitionedQuality | None = None
) -> tuple[Joiner, _Parts]:
    parts = _Parts(tmp_path)
    joiner = Joiner(
        policy=POLICY,
        topics=TOPICS,
        samples=parts.samples,  # type: ignore[arg-type]
        dead_letters=_DeadLetters(parts.events),
        samples_log=parts.log,  # type: ignore[arg-type]
        state_dir=tmp_path,
        on_log_lost=on_log_lost,
        quality=quality,
    )
    joiner.attach(parts.group)  # type: ignore[arg-type]
    return joiner, parts


def _checkpointed(tmp_path: Path, ends: dict[int, int], offsets: tuple[int, int]) -> Path:
    """A state file of partition 0 as an earlier run left it."""
    state = PartitionState(0, POLICY)
    state.predictions_offset, state.labels_offset = offsets
    path = state_path(tmp_path, TOPICS.predictions, 0)
    write_state(path, state, ends)
    return path


def test_taking_over_a_new_partition_checkpoints_in_the_documented_order(tmp_path: Path) -> None:
    joiner, parts = _joiner(tmp_path)
    parts.log.now = {0: 4}
    assert joiner.on_assign((0,)) == {0: (0, 0)}
    assert parts.events == [
        "read back",
        "flush samples",
        "flush dead letters",
        "read ends",
        "commit (state files written: True)",
    ]
    loaded = read_state(state_path(tmp_path, TOPICS.predictions, 0), POLICY)
    assert loaded is not None and loaded.samples_ends == {0: 4}
    assert parts.group.commits == [{("preds", 0): 0, ("labels", 0): 0}]


def test_a_restart_resumes_at_the_checkpoint_and_knows_what_it_emitted_after_it(
    tmp_path: Path,
) -> None:
    _checkpointed(tmp_path, {0: 5}, (3, 4))
    joiner, parts = _joiner(tmp_path)
    parts.log.now = {0: 7}
    parts.log.found = {join_tag(TOPICS.predictions, 0): {"r1": "joined", "r2": "default_label"}}
    assert joiner.on_assign((0,)) == {0: (3, 4)}
    assert joiner.states[0].already_emitted == {"r1": "joined", "r2": "default_label"}
    loaded = read_state(state_path(tmp_path, TOPICS.predictions, 0), POLICY)
    assert loaded is not None and loaded.samples_ends == {0: 7}  # checkpointed at once (step 4)


def test_an_undelivered_sample_stops_the_checkpoint_before_anything_is_written(
    tmp_path: Path,
) -> None:
    path = _checkpointed(tmp_path, {0: 5}, (3, 4))
    joiner, parts = _joiner(tmp_path)
    parts.log.now = {0: 5}
    joiner.on_assign((0,))
    before = path.read_bytes()
    parts.events.clear()
    parts.samples.error = RuntimeError("broker refused the record")
    with pytest.raises(JoinDeliveryError, match="restart to replay"):
        joiner.checkpoint((0,))
    assert "read ends" not in parts.events and not any("commit" in e for e in parts.events)
    assert path.read_bytes() == before


def test_a_checkpoint_kafka_fails_is_deferred_and_revoked_partitions_are_held(
    tmp_path: Path,
) -> None:
    joiner, parts = _joiner(tmp_path)
    joiner.on_assign((0,))
    state = joiner.states[0]
    commits = len(parts.group.commits)
    parts.log.fail = ConnectionError("broker unreachable")
    joiner._checkpoint_unless_kafka_fails()  # what the loop does when a checkpoint is due
    assert len(parts.group.commits) == commits  # nothing written, the last one stands
    parts.events.clear()
    joiner.on_revoke((0,))  # the group's session ran out during the outage
    assert parts.events == [] and joiner.states == {}  # kept in memory, not checkpointed
    parts.log.fail = None
    joiner.on_assign((0,))  # given back: resumes from memory
    assert joiner.states[0] is state
    assert len(parts.group.commits) == commits + 1


def test_a_samples_topic_that_lost_the_checkpointed_samples_stops_the_join(
    tmp_path: Path,
) -> None:
    path = _checkpointed(tmp_path, {0: 9}, (3, 4))
    before = path.read_bytes()
    joiner, parts = _joiner(tmp_path, on_log_lost="fail")
    parts.log.now = {0: 2}  # an emptied broker: the topic ends before the checkpoint's end
    with pytest.raises(JoinLogLost, match=r"join\.on_log_lost"):
        joiner.on_assign((0,))
    assert path.read_bytes() == before and parts.group.commits == []


def test_on_log_lost_earliest_starts_over_from_the_inputs_start(tmp_path: Path) -> None:
    _checkpointed(tmp_path, {0: 9}, (3, 4))
    joiner, parts = _joiner(tmp_path, on_log_lost="earliest")
    parts.group.assigned = (0,)
    parts.log.now = {0: 2}
    assert joiner.on_assign((0,)) == {0: (0, 0)}
    assert parts.samples.renewed == 1 and parts.group.seeks == [(0, 0, 0)]
    loaded = read_state(state_path(tmp_path, TOPICS.predictions, 0), POLICY)
    assert loaded is not None and loaded.samples_ends == {0: 2}
    assert (loaded.state.predictions_offset, loaded.state.labels_offset) == (0, 0)


def _served(quality: PartitionedQuality, version: str = "7") -> tuple[float, float]:
    """Served and labelled rows of (version, live) as the metrics would export them."""
    series = next(s for s in quality.series() if s.version == version and s.arm == "live")
    return series.values["served_rows"], series.values["labelled_rows"]


def test_served_quality_travels_with_its_partition_and_starts_over_with_it(
    tmp_path: Path,
) -> None:
    def fresh() -> PartitionedQuality:
        return PartitionedQuality(VersionBooks(POLICY.spec, 4, 60.0))

    first_quality = fresh()
    first, _ = _joiner(tmp_path, quality=first_quality)
    first.on_assign((0,))
    pairing = first_quality.of(0)
    assert pairing is not None
    pairing.prediction(PredictionRecord("r", 1.0, 7, "run", (0.3, 0.7), b""))
    assert _served(first_quality) == (1.0, 0.0)
    first.on_revoke((0,))  # checkpointed with the partition, then dropped here
    assert first_quality.of(0) is None
    assert all(s.values["served_rows"] == 0 for s in first_quality.series())

    second_quality = fresh()
    second, _ = _joiner(tmp_path, quality=second_quality)
    second.on_assign((0,))  # the member that takes it over loads row and tallies
    taken = second_quality.of(0)
    assert taken is not None and _served(second_quality) == (1.0, 0.0)
    taken.label("r", 1)  # served before the hand-over, labelled after it
    assert _served(second_quality) == (1.0, 1.0)
    second._start_over((0,))  # inputs read again from their start: the figures too
    assert all(s.values["served_rows"] == 0 for s in second_quality.series())
