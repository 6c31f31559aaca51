"""``streamtrain join``'s loop: consume predictions and labels, emit joined samples, checkpoint.

Exactly once across kill -9, without Kafka transactions. Each partition pair ``p`` has a
state file in ``state_dir`` holding its open predictions and labels, the next offsets of
predictions ``p`` and labels ``p`` that state reflects, and the samples topic's end offsets
``E`` at the time it was written. A checkpoint (:meth:`Joiner.checkpoint`) is, in order:

1. Stop applying input (the loop is one thread: nothing is consumed until step 5 is done).
2. Flush the samples and dead-letter producers. Every sample emitted from the input applied
   so far is now acknowledged, so it sits *below* any end offset read after this point; a
   failed delivery makes the checkpoint raise, so the process dies and replays it.
3. Read the samples topic's true ends ``E`` (from fetch responses, see
   :mod:`streamtrain.kafka.watermark`). Everything this join emits from here on lands at or
   after ``E``.
4. Write each partition's state file atomically (state, input offsets, ``E``, and the ids
   still awaiting reconciliation from the previous restart).
5. Commit the input offsets to the group, for lag monitoring only.

Taking over partition ``p`` (a start, a rebalance, a restart after kill -9):

1. Load its state file (none: empty state at the logs' start).
2. Read the samples topic from that file's ``E`` to its current end and collect the ids of
   samples tagged ``streamtrain-join: <predictions topic>/p`` with their outcome: exactly
   what was emitted after the checkpoint, before the crash.
3. Resume both inputs at the checkpointed offsets. Replaying them resolves the same ids
   again; an id found in step 2 is resolved with the outcome that was emitted and emits
   nothing (:class:`~streamtrain.join.partition_state.PartitionState`), so every joined
   sample exists once.
4. Write a checkpoint at once, so a crash during the replay starts from here (the ids of
   step 2 not yet met travel in it).

Riding out a broker outage (the process stays up; ``streamtrain_kafka_reachable`` 0 and
readiness condition ``kafka`` false, from :mod:`streamtrain.kafka.reachability`):

1. While Kafka is unreachable no checkpoint is taken (step 2 could not finish) and the loop
   keeps polling and beating; a checkpoint that Kafka fails before step 4 (no answer, a
   timeout) wrote nothing, so the last one stands and the next is tried later. The samples
   producer has no delivery timeout, so a sample emitted before or during the outage is
   neither dropped nor failed: it stays queued until the broker acknowledges it.
2. Partitions the group revokes during the outage (session timeout) are kept in memory,
   not checkpointed; given back to this member they resume from that memory, producer queue
   included, exactly as if never revoked. Given to another member instead, they are dropped
   here, and the other replays from the last checkpoint (the pause case below).
3. The first checkpoint after an outage first checks that the samples topic still holds
   what the last checkpoint saw (no partition ends before its ``E``; so does taking over a
   partition, against its state file's ``E``, and every checkpoint's step 3, for an outage
   too short to be noticed). A broker that came back without its data
   (emptied, lost volume, re-created topic) fails that check: the checkpoints no longer
   describe any log, and ``join.on_log_lost`` decides (:mod:`streamtrain.join.log_lost`):
   start over with empty state from the inputs' start, checkpointed at once, or stop with
   exit 6. Neither emits a sample of the new logs twice or skips one.

A replica that only pauses (not dies) beyond the session timeout while another takes its
partitions could emit twice; librdkafka's ``max.poll.interval.ms`` bounds that window.
Dead letters are at least once: a replay may copy a label to the dead-letter topic again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamtrain import health, metrics
from streamtrain.ingest.deadletter import DeadLetterSink
from streamtrain.join.input_logs import InputLogs
from streamtrain.join.label_routing import LabelRouting
from streamtrain.join.log_lost import JoinLogLost, OnLogLost, latest_ends, start_over_or_fail
from streamtrain.join.partition_state import (
    DEAD_LETTER_REASONS,
    EXPIRY_CAUSES,
    Action,
    DeadLetter,
    Emit,
    Expired,
    JoinPolicy,
    PartitionState,
    SourceRecord,
)
from streamtrain.join.samples_log import SamplesLog, join_tag, moved_back
from streamtrain.join.samples_out import SamplesOut
from streamtrain.join.state_file import read_state, state_path, write_state
from streamtrain.kafka.confluent_records import ConfluentRecord
from streamtrain.kafka.group_consumer import CoPartitionedGroup
from streamtrain.kafka.reachability import REACHABILITY
from streamtrain.quality.partitions import PartitionedQuality

log = logging.getLogger(__name__)

# A caught-up partition is taken as read up to "now" minus this: the high watermark comes from
# a fetch some milliseconds old, and a record stamped just before it may not be appended yet.
CAUGHT_UP_SLACK_S = 0.5
_FLUSH_TIMEOUT_S = 60.0


class JoinDeliveryError(RuntimeError):
    """A joined sample was not acknowledged: the join stops and replays from its checkpoint."""


@dataclass(frozen=True)
class JoinTopics:
    predictions: str
    labels: str
    samples: str


class Joiner:
    """Joins labels to logged predictions for the partitions its group member holds.

    Built by ``streamtrain join`` (:mod:`streamtrain.cli.join`); ``group`` is made by the
    caller with :meth:`on_assign` / :meth:`on_revoke` as its callbacks (:meth:`attach`)."""

    def __init__(
        self,
        *,
        policy: JoinPolicy,
        topics: JoinTopics,
        samples: SamplesOut,
        dead_letters: DeadLetterSink,
        samples_log: SamplesLog,
        state_dir: Path,
        checkpoint_every_s: float = 2.0,
        on_log_lost: OnLogLost = "fail",
        wall_clock: Callable[[], float] = time.time,
        input_logs: InputLogs | None = None,
        quality: PartitionedQuality | None = None,
    ) -> None:
        self.policy = policy
        self.topics = topics
        self._samples = samples
        self._dead_letters = dead_letters
        self._samples_log = samples_log
        self._state_dir = state_dir
        self._every_s = checkpoint_every_s
        self._on_log_lost: OnLogLost = on_log_lost
        self._clock = wall_clock
        self._group: CoPartitionedGroup | None = None
        self._inputs = input_logs  # None: input logs not rechecked (unit tests without Kafka)
        self._quality = quality or PartitionedQuality(None)  # served quality (None: off)
        self._routing = LabelRouting(topics.labels, self._require_group)
        self.states: dict[int, PartitionState] = {}
        self._checkpointed_ends: dict[int, int] | None = None  # E of the last checkpoint
        self._outage = False  # Kafka was unreachable since the last checkpoint
        self._held: dict[int, PartitionState] = {}  # revoked during an outage (docstring 2.)
        self._log_lost = False  # stopping on a lost log: no checkpoint may overwrite the old
        self._last_checkpoint = time.monotonic()
        self._stop = False
        # Labelled children looked up once: a lookup per record costs as much as the join.
        self._consumed = {
            t: metrics.JOIN_RECORDS.labels(topic=t) for t in (topics.predictions, topics.labels)
        }
        self._emitted = {
            o: metrics.JOIN_SAMPLES.labels(outcome=o) for o in ("joined", "default_label")
        }
        self._expiry_policy = "drop" if policy.default_label is None else "default_label"
        # Closed label sets at 0 from the start: increase() sees the first event.
        expiries = [(self._expiry_policy, cause) for cause in EXPIRY_CAUSES]
        metrics.export_at_zero(metrics.JOIN_EXPIRED, expiries)
        metrics.export_at_zero(metrics.JOIN_DEAD_LETTERS, DEAD_LETTER_REASONS)

    def attach(self, group: CoPartitionedGroup) -> None:
        self._group = group

    def request_stop(self) -> None:
        self._stop = True

    # --- the loop ---------------------------------------------------------------------------

    def run(self, stop_when: Callable[[], bool] = lambda: False) -> None:
        """Join until :meth:`request_stop` or ``stop_when()``; checkpoints before returning."""
        group = self._require_group()
        health.set_condition("group", False, "waiting for the first partition assignment")
        try:
            while not self._stop and not stop_when():
                health.beat()
                REACHABILITY.check()  # while unreachable: probe now and then, summarize
                if not REACHABILITY.reachable:
                    self._outage = True
                records = group.poll(0.05)
                if self._inputs is not None:  # after an interruption: inputs still the same?
                    records = self._inputs.checked(records, self.states, group.seek)
                for record in records:
                    self._apply(record)
                self._count(records)
                self._samples.poll()  # delivery callbacks
                self._advance()
                due = time.monotonic() - self._last_checkpoint >= self._every_s
                if due and self.states and REACHABILITY.reachable:
                    self._checkpoint_unless_kafka_fails()
                self._export_gauges()
        finally:
            if not REACHABILITY.reachable:
                log.warning(
                    "stopping without a checkpoint (Kafka unreachable): the next start "
                    "replays from the last one"
                )
            elif self.states and self._samples.error is None and not self._log_lost:
                self.checkpoint(tuple(self.states))

    def _apply(self, record: ConfluentRecord) -> None:
        state = self.states.get(record.partition)
        if state is None:  # fetched before a revoke: the new owner applies it
            return
        source = SourceRecord.of(record)
        self._quality.observe(record.partition, source, record.topic == self.topics.predictions)
        if record.topic == self.topics.predictions:
            self._carry_out(state, state.add_prediction(source))
        else:
            self._routing.arrived(source)
            self._carry_out(state, state.add_label(source))

    def _count(self, records: Sequence[ConfluentRecord]) -> None:
        predictions = sum(1 for r in records if r.topic == self.topics.predictions)
        self._consumed[self.topics.predictions].inc(predictions)
        self._consumed[self.topics.labels].inc(len(records) - predictions)

    def _advance(self) -> None:
        group = self._require_group()
        now = self._clock() - CAUGHT_UP_SLACK_S
        for p, state in self.states.items():
            if _caught_up(group.highwater(self.topics.labels, p), state.labels_offset):
                state.saw_labels_until(now)
            if _caught_up(group.highwater(self.topics.predictions, p), state.predictions_offset):
                state.saw_predictions_until(now)
            self._carry_out(state, state.advance())

    def _carry_out(self, state: PartitionState, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Emit):
                self._emit(state.partition, action)
            elif isinstance(action, DeadLetter):
                action = self._routing.dead_letter(action)
                source = (
                    "predictions" if action.record.topic == self.topics.predictions else "labels"
                )
                metrics.JOIN_DEAD_LETTERS.labels(source=source, reason=action.reason).inc()
                self._dead_letters.send(action.record, action)
            elif isinstance(action, Expired):
                metrics.JOIN_EXPIRED.labels(policy=self._expiry_policy, cause=action.cause).inc()

    def _emit(self, partition: int, emit: Emit) -> None:
        self._samples.emit(partition, emit)
        self._emitted[emit.outcome].inc()
        if emit.label_delay_s is not None:
            metrics.JOIN_LABEL_DELAY.observe(max(0.0, emit.label_delay_s))

    def _export_gauges(self) -> None:
        metrics.JOIN_PENDING_PREDICTIONS.set(sum(len(s.predictions) for s in self.states.values()))
        metrics.JOIN_PENDING_LABELS.set(sum(len(s.labels) for s in self.states.values()))
        metrics.JOIN_CHECKPOINT_AGE.set(time.monotonic() - self._last_checkpoint)

    # --- checkpoints and ownership (the ordering is in the module docstring) -----------------

    def checkpoint(self, partitions: Sequence[int]) -> None:
        started = time.monotonic()
        if self._outage:  # outage 3.
            if self._checkpointed_ends is not None and self._lost(self._checkpointed_ends):
                self._start_over(tuple(self.states))
                partitions, self._checkpointed_ends = tuple(self.states), None
            self._outage = False
        self._samples.flush(_FLUSH_TIMEOUT_S, give_up=lambda: not REACHABILITY.reachable)  # 2.
        self._dead_letters.flush(_FLUSH_TIMEOUT_S)
        if self._samples.error is not None:
            raise JoinDeliveryError(
                f"a joined sample was not delivered to {self.topics.samples!r} "
                f"({self._samples.error}); restart to replay from the last checkpoint"
            )
        ends = self._samples_log.ends()  # 3.
        last, self._checkpointed_ends = self._checkpointed_ends, ends
        if last is not None and self._lost(last, ends):  # outage 3., an outage too short to see
            self._start_over(tuple(self.states))
            partitions = tuple(self.states)
        written = 0
        offsets: dict[tuple[str, int], int] = {}
        for p in partitions:  # 4.
            state = self.states[p]
            path = state_path(self._state_dir, self.topics.predictions, p)
            written += write_state(path, state, ends, self._quality.of(p))
            offsets[(self.topics.predictions, p)] = state.predictions_offset
            offsets[(self.topics.labels, p)] = state.labels_offset
        if self._group is not None and offsets:  # 5.
            self._group.commit(offsets)
        self._last_checkpoint = time.monotonic()
        metrics.JOIN_CHECKPOINT_SECONDS.observe(self._last_checkpoint - started)
        metrics.JOIN_CHECKPOINT_BYTES.set(written)

    def _checkpoint_unless_kafka_fails(self) -> None:
        """A due checkpoint; Kafka failing before step 4 keeps the last one (outage 1.)."""
        try:
            self.checkpoint(tuple(self.states))
        except (ConnectionError, TimeoutError) as exc:  # unreachable, no answer in time
            self._outage = True
            self._last_checkpoint = time.monotonic() - self._every_s / 2  # retry soon
            if REACHABILITY.reachable:  # otherwise the outage lines say it all
                log.warning("checkpoint deferred: %s", exc)

    def on_assign(self, partitions: tuple[int, ...]) -> Mapping[int, tuple[int, int]]:
        """Take over ``partitions``: load, reconcile with the samples topic, checkpoint."""
        started = time.monotonic()
        self._routing.refresh()
        starts: dict[str, Mapping[int, int]] = {}
        kept = {p: self._held.pop(p) for p in partitions if p in self._held}  # outage 2.
        if self._held:
            log.warning(
                "partitions %s went to another member during the Kafka outage: it replays "
                "them from their last checkpoint",
                sorted(self._held),
            )
            self._quality.drop(*self._held)
            self._held.clear()
        self.states.update(kept)
        for p in partitions:  # 1.
            if p in kept:
                continue
            path = state_path(self._state_dir, self.topics.predictions, p)
            loaded = read_state(path, self.policy, self._quality)
            self._quality.take(p, None if loaded is None else loaded.quality)
            if loaded is None:
                self.states[p] = PartitionState(p, self.policy, wall_clock=self._clock)
                continue
            loaded.state.wall_clock = self._clock
            self.states[p] = loaded.state
            starts[join_tag(self.topics.predictions, p)] = loaded.samples_ends
        if starts and self._lost(latest_ends(starts.values())):  # from an emptied broker
            self._start_over([p for p in partitions if p not in kept])
            starts = {}
        elif self._inputs is not None:  # an input re-created alone: read it from its start
            self._inputs.recheck({p: self.states[p] for p in partitions if p not in kept})
        emitted = self._samples_log.emitted_since(starts)  # 2.
        for p in partitions:
            if p in kept:
                continue
            found = emitted.get(join_tag(self.topics.predictions, p), {})
            self.states[p].already_emitted.update(found)
            if found:
                log.info("partition %d: %d samples emitted after its checkpoint", p, len(found))
        if partitions:
            self.checkpoint(partitions)  # 4.
        metrics.JOIN_ASSIGNED.set(len(self.states))
        metrics.JOIN_ASSIGN_SECONDS.observe(time.monotonic() - started)
        health.set_condition("group", True, f"holding partitions {sorted(self.states)}")
        log.info("joining partitions %s", list(partitions))
        return {  # 3.
            p: (self.states[p].predictions_offset, self.states[p].labels_offset) for p in partitions
        }

    def on_revoke(self, partitions: tuple[int, ...]) -> None:
        """Hand ``partitions`` back: checkpoint them, then forget them."""
        held = tuple(p for p in partitions if p in self.states)
        if held and (self._outage or not REACHABILITY.reachable):  # outage 2.
            self._outage = True
            self._held.update({p: self.states.pop(p) for p in held})
            metrics.JOIN_ASSIGNED.set(len(self.states))
            log.warning("partitions %s revoked during a Kafka outage: kept, not checkpointed", held)
            return
        if held and self._samples.error is None:
            self.checkpoint(held)
        for p in held:
            del self.states[p]
            self._quality.drop(p)
        metrics.JOIN_ASSIGNED.set(len(self.states))
        log.info("handed back partitions %s", list(held))

    def _lost(self, checkpointed: Mapping[int, int], now: Mapping[int, int] | None = None) -> bool:
        """Whether the samples topic (its ends ``now``, read when None) lost what ``checkpointed``
        saw and the join starts over (join.log_lost; JoinLogLost under on_log_lost=fail)."""
        if not checkpointed:
            return False
        if now is None:
            why = self._samples_log.lost_since(checkpointed)
        else:
            why = moved_back(self.topics.samples, checkpointed, now)
        try:
            return start_over_or_fail(why, self._on_log_lost, self._state_dir)
        except JoinLogLost:
            self._log_lost = True
            raise

    def _start_over(self, partitions: Sequence[int]) -> None:
        """Empty state for ``partitions``, both inputs read again from their start, a new
        producer (:mod:`streamtrain.join.samples_out`)."""
        self._samples.renew()
        assigned = self._group.assigned if self._group is not None else ()
        for p in partitions:
            self.states[p] = PartitionState(p, self.policy, wall_clock=self._clock)
            self._quality.take(p, None)
            if p in assigned and self._group is not None:
                self._group.seek(p, 0, 0)
        metrics.JOIN_LOG_RESETS.inc()

    def _require_group(self) -> CoPartitionedGroup:
        if self._group is None:
            raise RuntimeError("Joiner.attach(group) must be called before run()")
        return self._group


def _caught_up(highwater: int | None, next_offset: int) -> bool:
    return highwater is not None and next_offset >= highwater
