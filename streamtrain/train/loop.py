"""The trainer loop: micro-batches in, gradient steps, snapshots and checkpoints out.

Semantics the loop upholds (DESIGN.md):

1. No sample lost, none counted twice in the model. The position saved in a checkpoint is the
   ``next_offsets`` of the last batch applied to the weights saved with it, so restoring it and
   seeking there replays exactly the batches the weights have not seen. Offsets committed to the
   consumer group are only for lag monitoring; the checkpoint is the source of truth.
2. Bad input never stops training: ingest drops bad records; the learner's guard refuses
   non-finite steps and rolls back after repeated ones.
3. Versions only move forward, and a version names one set of weights: a snapshot's version is
   the trainer step, which resumes from the checkpoint, so a restarted trainer keeps publishing
   increasing versions under its run id. A run that has learned nothing yet (no checkpoint, or
   one that only recorded how far rejected records went) starts its step at the newest version
   of its configuration on the snapshot topic (``first_version``); its first step takes it
   strictly above, so it never reuses a version another run published.
4. Never serve what was not learned: no snapshot is published before the run has learned at
   least one sample. A checkpoint is still written when only rejected records were read (the
   position, so they are not read again), and it publishes nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from streamtrain import health, metrics
from streamtrain.checkpoint import CheckpointStore, TrainerState
from streamtrain.checkpoint.meta import TOPIC_ID
from streamtrain.ingest.device import to_device
from streamtrain.sample.batch import Batch
from streamtrain.train.cadence import EveryPolicy
from streamtrain.train.hooks import SnapshotRequest, SnapshotSink
from streamtrain.train.learner import Learner
from streamtrain.train.prefetch import PrefetchingSource, SampleSource
from streamtrain.train.prequential import RollingMetrics
from streamtrain.train.progress import StopConditions, TrainProgress, TrainSummary
from streamtrain.train.promotion_gate import PromotionGate
from streamtrain.train.row_tracker import RowTracker
from streamtrain.train.snapshot_copy import SnapshotCopier
from streamtrain.train.throughput import ThroughputGauge
from streamtrain.train.weights import SnapshotCopy, take_snapshot

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # longest wait for a batch before the cadences are checked again
# At the stop: how long the prefetch thread may take to end (its batch in flight, then the last
# commit). The checkpoint already holds the offsets, so the commit only updates the group's
# position for lag monitoring; a thread blocked on a broker that stopped answering would
# otherwise hold the stop 10 s (the demo's and many supervisors' whole grace period).
_PREFETCH_STOP_S = 3.0
_METRICS_EVERY_STEPS = 16
_METRICS_EVERY_SECONDS = 0.5


class Trainer:
    """Consumes micro-batches from a source and trains ``learner`` on them.

    ``run()`` executes, per batch (the order is the correctness argument):

    1. Take the next micro-batch from the prefetch queue (fetched and decoded in the background).
    2. Move it to the device (pinned memory, non-blocking copies on CUDA).
    3. Prequential evaluation: score the current weights on the batch before learning from it.
    4. Loss, backward, clip, optimizer step (inside ``Learner.learn``).
    5. Guard: a non-finite loss or gradient is not applied; repeated ones roll back.
    6. Maybe publish a snapshot (every N steps or T seconds) to the snapshot sink, if the
       promotion gate (``train/promotion_gate.py``, when configured) admits it.
    7. Maybe checkpoint: weights, optimizer, RNG, step and the offsets after this batch.
    8. Commit the offsets that checkpoint covers to the consumer group (lag monitoring only).

    A batch holding only rejected records advances the offsets but takes no step.
    """

    def __init__(
        self,
        *,
        source: SampleSource,
        learner: Learner,
        checkpoints: CheckpointStore,
        snapshot_sink: SnapshotSink | None,
        model_settings: Mapping[str, Any],
        snapshot_policy: EveryPolicy,
        checkpoint_policy: EveryPolicy,
        metric_window: int = 1000,
        prefetch_depth: int = 4,
        stop: StopConditions = StopConditions(),
        first_version: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
        promotion_gate: PromotionGate | None = None,
        row_tracker: RowTracker | None = None,
    ) -> None:
        self._source = source
        self._row_tracker = row_tracker
        # Full snapshots copied off the training thread (snapshot_copy.py) where there are any
        self._copier = (
            SnapshotCopier(learner.model, learner.optimizer) if snapshot_sink is not None else None
        )
        self._gate = promotion_gate
        self._learner = learner
        self._checkpoints = checkpoints
        self._sink = snapshot_sink
        self._model_settings = dict(model_settings)
        self._snapshot_policy = snapshot_policy
        self._checkpoint_policy = checkpoint_policy
        self._rolling = RollingMetrics(metric_window)
        self._score_gauge = (
            metrics.TRAIN_MAE if learner.head.spec.task == "regression" else metrics.TRAIN_ACCURACY
        )
        self._pending_scores: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._last_flush = clock()
        self._prefetch_depth = prefetch_depth
        self._stop_conditions = stop
        self._first_version = first_version
        self._clock = clock
        self._stop_requested = threading.Event()
        self._progress = TrainProgress()
        self._run_id = uuid.uuid4().hex[:12]
        self._unsaved_since: float | None = None  # wall time of the oldest step not checkpointed
        self._last_snapshot_step = -1
        self._checkpointed: tuple[int, dict[int, int]] = (0, {})
        self._optimizer_updates = 0  # this process
        self._records_rejected = 0  # this process

    @property
    def run_id(self) -> str:
        return self._run_id

    def request_stop(self) -> None:
        """Finish the current step, checkpoint, commit and return from ``run`` (signal-safe)."""
        self._stop_requested.set()

    def restore(self) -> int | None:
        """Load the newest valid checkpoint and seek the source to its offsets."""
        state = self._checkpoints.load_latest(*self._learner_parts(), world_size=1)
        positions = self._source.positions()
        if state is None:
            # A fresh run continues the version sequence servers already follow, so its
            # snapshots are not refused as stale and never reuse a version (semantics 3).
            self._progress = TrainProgress(step=self._first_version(), offsets=positions)
            self._snapshot_policy.mark(self._progress.step)
            self._checkpoint_policy.mark(self._progress.step)
            self._checkpointed = (self._progress.step, dict(positions))
            return None
        self._run_id = state.run_id
        self._progress = TrainProgress(
            step=self._resumed_step(state),
            samples_seen=state.samples_seen,
            offsets={**positions, **state.offsets},
            watermark=state.data_watermark,
            marks=dict(state.marks),
        )
        self._source.resume(state.offsets, state.marks, state.extra.get(TOPIC_ID))
        self._checkpointed = (state.step, dict(self._progress.offsets))
        self._learner.snapshot_good_state()
        self._snapshot_policy.mark(self._progress.step)
        self._checkpoint_policy.mark(self._progress.step)
        log.info("resumed run %s at step %d, offsets %s", state.run_id, state.step, state.offsets)
        return state.step

    def _resumed_step(self, state: TrainerState) -> int:
        """The checkpoint's step; for a checkpoint of a run that learned nothing (it recorded
        rejected records' offsets only, and published nothing) at least the newest version on
        the snapshot topic, which another run may have raised since (semantics 3)."""
        if state.samples_seen:
            return state.step
        return max(state.step, self._first_version())

    def run(self, on_restored: Callable[[], None] | None = None) -> TrainSummary:
        """Restore, then train until stopped; ``on_restored`` is called between the two, on
        this thread (``cli/train.py`` installs its stop handlers there: nothing before the
        first step needs saving, so until then a stop signal keeps its default action)."""
        started = self._clock()
        health.set_condition("checkpoint", False, "restoring the newest checkpoint")
        resumed = self.restore()
        if on_restored is not None:
            on_restored()
        restored = "started a new run" if resumed is None else f"resumed at step {resumed}"
        health.set_condition("checkpoint", True, restored)
        metrics.TRAIN_STEP.set(self._progress.step)
        metrics.export_on_first_value(metrics.TRAINER_REGISTRY, metrics.TRAIN_LEARNING_RATE)
        metrics.TRAIN_LEARNING_RATE.set(self._learner.learning_rate)
        if self._progress.watermark is not None:  # restored: the data the weights learned from
            metrics.export_on_first_value(metrics.TRAINER_REGISTRY, metrics.TRAIN_DATA_WATERMARK)
            metrics.TRAIN_DATA_WATERMARK.set(self._progress.watermark)
        prefetch = PrefetchingSource(self._source, depth=self._prefetch_depth).start()
        reason = "stopped"
        try:
            reason = self._loop(prefetch)
        finally:
            self._flush_scores()
            self._finish(prefetch)
        loss, score = self._rolling.loss, self._rolling.score
        return TrainSummary(
            steps=self._progress.step,
            samples_seen=self._progress.samples_seen,
            run_id=self._run_id,
            stop_reason=reason,
            elapsed_seconds=self._clock() - started,
            resumed_from_step=resumed,
            rolling_loss=loss,
            rolling_score=score,
            optimizer_updates=self._optimizer_updates,
            records_rejected=self._records_rejected,
            score_name="mae" if self._learner.head.spec.task == "regression" else "accuracy",
        )

    def _learner_parts(self) -> tuple[nn.Module, Optimizer, LRScheduler | None]:
        learner = self._learner
        return learner.model, learner.optimizer, learner.scheduler

    def _loop(self, prefetch: PrefetchingSource) -> str:
        """One iteration per batch, or per poll interval without one:

        1. Beat the heartbeat: an iteration stuck anywhere turns ``/health/live`` bad.
        2. Stop once ``max_samples`` were learned, or after ``stop_when_idle`` without input.
        3. Take the next batch (waiting at most one poll interval); learn from it if one came.
        4. Publish and checkpoint when their cadence expired, batch or not: the last steps of a
           burst reach the servers within ``snapshot_every_seconds`` + one poll interval and
           disk within ``checkpoint_every_seconds`` while the stream is quiet. Both policies
           fire only for steps not yet published / checkpointed, so an idle trainer with
           nothing new writes nothing.
        """
        stop = self._stop_conditions
        last_input = self._clock()
        throughput = ThroughputGauge(self._clock)
        while not self._stop_requested.is_set():
            health.beat()
            if stop.max_samples is not None and self._progress.samples_seen >= stop.max_samples:
                return "max_samples"
            batch = prefetch.get(timeout=POLL_SECONDS)
            if batch is not None:
                # An empty batch too: after an offset reset it carries the new position.
                self._progress.advance(batch)
            throughput.add(0 if batch is None else batch.size)
            if batch is None or batch.records == 0:
                if self._pending_scores:
                    self._flush_scores()
                idle = self._clock() - last_input
                if stop.stop_when_idle is not None and idle >= stop.stop_when_idle:
                    return "idle"
            else:
                last_input = self._clock()
                self._records_rejected += batch.records - batch.size
                if batch.size:
                    self._train_on(batch)
            self._maybe_snapshot()
            if self._checkpoint_policy.expired(self._progress.step):
                self._checkpoint(prefetch)
            unsaved = self._unsaved_since
            metrics.CHECKPOINT_AGE.set(0.0 if unsaved is None else time.time() - unsaved)
        return "signal"

    def _train_on(self, batch: Batch) -> None:
        started = time.perf_counter()
        on_device = to_device(batch, self._learner.device)
        outcome = self._learner.learn(
            on_device.features, on_device.labels, on_device.weights, on_device.sparse
        )
        progress = self._progress
        progress.step += 1
        progress.samples_seen += outcome.samples  # every rank's samples in a distributed step
        metrics.TRAIN_STEP.set(progress.step)
        if self._unsaved_since is None:
            self._unsaved_since = time.time()
        watermark = batch.watermark
        if not math.isnan(watermark):
            progress.watermark = max(progress.watermark or watermark, watermark)
            metrics.export_on_first_value(metrics.TRAINER_REGISTRY, metrics.TRAIN_DATA_WATERMARK)
            metrics.TRAIN_DATA_WATERMARK.set(progress.watermark)
        if outcome.applied:
            # one trainer step, possibly several optimizer updates (optimizer.step_samples)
            metrics.TRAIN_OPTIMIZER_UPDATES.inc(outcome.steps)
            self._optimizer_updates += outcome.steps
            metrics.TRAIN_SAMPLES.inc(batch.size)
        metrics.TRAIN_STEP_SECONDS.observe(time.perf_counter() - started)
        self._pending_scores.append((outcome.samples, outcome.loss, outcome.score_sum))
        if (
            len(self._pending_scores) >= _METRICS_EVERY_STEPS
            or self._clock() - self._last_flush >= _METRICS_EVERY_SECONDS
        ):
            self._flush_scores()

    def _flush_scores(self) -> None:
        """Read the loss and score of recent steps back from the device in one transfer.

        Reading them every step would add a device->host sync per step on CUDA.
        """
        pending, self._pending_scores = self._pending_scores, []
        self._last_flush = self._clock()
        if pending:
            values = torch.stack(
                [torch.stack([loss.float(), score.float()]) for _, loss, score in pending]
            ).tolist()
            for (size, _, _), (loss, score_sum) in zip(pending, values, strict=True):
                self._rolling.update(size, loss * size, score_sum)
                if self._gate is not None:
                    self._gate.observe(loss)
        loss, score = self._rolling.loss, self._rolling.score
        if not math.isnan(loss):  # absent until there is a value, never a made-up 0
            metrics.export_on_first_value(
                metrics.TRAINER_REGISTRY, metrics.TRAIN_LOSS, self._score_gauge
            )
            metrics.TRAIN_LOSS.set(loss)
            self._score_gauge.set(score)
        metrics.TRAIN_LEARNING_RATE.set(self._learner.learning_rate)

    def _maybe_snapshot(self, force: bool = False) -> None:
        if not self._snapshot_due(force):
            return
        self._publish(take_snapshot(self._learner.model, self._row_tracker, self._copier))

    def _snapshot_due(self, force: bool) -> bool:
        """A sink, something learned (semantics 4: never serve what was not), the policy (or
        ``force``) and the promotion gate agree; a held snapshot waits a full period."""
        step = self._progress.step
        if self._sink is None or step == self._last_snapshot_step:
            return False
        if self._progress.samples_seen == 0 or not (force or self._snapshot_policy.expired(step)):
            return False
        if self._gate is not None:
            if self._pending_scores:
                self._flush_scores()  # judge on every step the snapshot holds
            if not self._gate.admit(step, self._rolling.loss, self._rolling.score):
                self._snapshot_policy.mark(step)  # held: wait a full period before the next try
                self._last_snapshot_step = step
                return False
        return True

    def _publish(self, taken: SnapshotCopy, created_at: float | None = None) -> None:
        """Offer ``taken`` at this step; ``created_at`` is the trainer's clock unless the
        ranks of a sharded job agreed on one (every shard of a step has the same)."""
        assert self._sink is not None  # _snapshot_due said so
        step = self._progress.step
        self._sink.offer(
            SnapshotRequest(
                version=step,
                run_id=self._run_id,
                tensors=taken.tensors,
                data_watermark=self._progress.watermark,
                offsets=dict(self._progress.offsets),
                created_at=time.time() if created_at is None else created_at,
                wait_ready=taken.wait_ready,
                rows=taken.rows,
                complete=taken.complete,
            )
        )
        self._snapshot_policy.mark(step)
        self._last_snapshot_step = step
        device = self._learner.device
        if device.type == "cuda":
            metrics.TRAIN_CUDA_MEMORY.set(torch.cuda.memory_allocated(device))

    def _checkpoint(self, prefetch: PrefetchingSource) -> None:
        progress = self._progress
        state = TrainerState(
            step=progress.step,
            samples_seen=progress.samples_seen,
            run_id=self._run_id,
            offsets=dict(progress.offsets),
            model_settings=self._model_settings,
            data_watermark=progress.watermark,
            marks=dict(progress.marks),
            extra={} if self._source.topic_id is None else {TOPIC_ID: self._source.topic_id},
        )
        self._checkpoints.save(state, *self._learner_parts())
        self._checkpoint_policy.mark(progress.step)
        self._unsaved_since = None
        self._checkpointed = (progress.step, dict(progress.offsets))
        prefetch.request_commit(state.offsets)

    def _finish(self, prefetch: PrefetchingSource) -> None:
        """Graceful end: checkpoint what was learned, commit it, publish the last weights."""
        try:
            if self._needs_checkpoint():
                self._checkpoint(prefetch)
            self._maybe_snapshot(force=True)
        finally:
            self._close(prefetch)

    def _needs_checkpoint(self) -> bool:  # anything learned or read since the last checkpoint
        return (self._progress.step, self._progress.offsets) != self._checkpointed

    def _close(self, prefetch: PrefetchingSource) -> None:
        prefetch.close(_PREFETCH_STOP_S)
        if self._sink is not None:
            self._sink.close()
        if self._copier is not None:
            self._copier.close()
