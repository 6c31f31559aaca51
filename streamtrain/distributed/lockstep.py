"""The trainer loop on every rank of a distributed job: the same decisions, in the same steps.

Each rank runs :class:`LockstepTrainer` over its own partitions. Every iteration starts with one
small all-reduce, the *vote*, so that no rank ever waits in a collective the others skip:

1. Each rank takes its next local batch (``_next_contribution``: chosen by the log, so a
   replay pairs the same batches into the same steps) and votes: its
   samples, its records, whether it was asked to stop, whether it has been idle past
   ``stop_when_idle``, whether its checkpoint cadence expired.
2. Any stop request stops every rank; the idle stop needs every rank idle.
3. If any rank holds samples, every rank steps (an empty batch where it has none): the learner's
   :class:`~streamtrain.distributed.step_sync.GradientSync` makes it the union-batch step, so
   the step counter, ``samples_seen`` and the rolling metrics are the same on every rank.
4. Rank 0 alone publishes snapshots (the other ranks have no sink); with ``row_wise``
   tables every rank has a sink and publishes its own shard of the same step
   (:mod:`.shard_snapshot`), which servers assemble.
5. If any rank's checkpoint cadence expired, every rank checkpoints (:meth:`_checkpoint`).

Checkpoints are one consistent cut. The weights and optimizer state are identical on every
rank after each step, so rank 0 writes them once; what differs per rank is the offsets. The
checkpoint is written in two phases:

a. Every rank hands its next offsets at step S to an all-reduce over all partitions: the
   collective completes only once every rank has given its part (the barrier).
b. Rank 0 writes weights, optimizer, step S and the union of the offsets into a temporary
   directory and renames it to ``step-S`` (the commit marker is that rename, written last).
c. A second barrier: no rank commits offsets to the consumer group, nor takes step S + 1's
   checkpoint decision, before the commit exists.

With ``row_wise`` tables (:mod:`streamtrain.distributed.row_exchange`) the weights differ per
rank: in phase b every other rank first stages its own model and optimizer files and hands
their digests to rank 0, which moves them into the same directory before the commit
(:mod:`streamtrain.checkpoint.shards`); on restart each rank reads its own.

The checkpoint directory must be one every rank reads (one host, or shared storage): on a
restart every rank restores the same ``step-S`` and seeks its own partitions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from streamtrain import health, metrics
from streamtrain.checkpoint import TrainerState
from streamtrain.checkpoint.shards import (
    SHARD_FILES,
    digests_to_tensor,
    stage_shard,
    tensor_to_digests,
)
from streamtrain.distributed.group import RankGroup
from streamtrain.distributed.row_exchange import attach_row_exchange
from streamtrain.distributed.shard_snapshot import agree_on_snapshot, sharded_names, take_shard
from streamtrain.distributed.sparse_sync import sparse_embedding_weights
from streamtrain.distributed.step_sync import (
    GradientSync,
    attach_loss_sync,
    attach_moments_sync,
)
from streamtrain.sample.batch import Batch
from streamtrain.sample.sparse_numpy import SparseRows
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.train.loop import POLL_SECONDS, Trainer
from streamtrain.train.prefetch import PrefetchingSource
from streamtrain.train.progress import TrainProgress
from streamtrain.train.throughput import ThroughputGauge

log = logging.getLogger(__name__)

_SAMPLES, _RECORDS, _STOP, _IDLE, _CHECKPOINT = range(5)
_FINAL_FLUSH_S = 30.0  # a sharded job's ranks wait for their queued shards before the last
_MAX_BACKLOG_WAIT = 30.0  # seconds a rank waits for records its log holds before going on


class LockstepTrainer(Trainer):
    """A :class:`Trainer` that steps in lockstep with the other ranks of ``group``."""

    def __init__(self, *, group: RankGroup, all_partitions: tuple[int, ...], **kwargs: Any):
        super().__init__(**kwargs)
        if self._learner.step_samples != "batch" and group.is_leader:
            log.warning(
                "optimizer.step_samples=%s does not apply to several ranks: each step is the "
                "union of one batch per rank (set it to 'batch' to silence this)",
                self._learner.step_samples,
            )
        self._group = group
        self._failed = False
        self._all_partitions = tuple(sorted(all_partitions))
        exchange, self._sharded = attach_row_exchange(self._learner.model)
        self._learner.step_reducer = GradientSync(
            sparse_embedding_weights(self._learner.model), exchange, self._sharded
        )
        attach_moments_sync(self._learner.model)
        attach_loss_sync(self._learner.model)
        # NCCL reduces device tensors only; gloo reduces host tensors
        self._comm = self._learner.device if group.backend == "nccl" else torch.device("cpu")

    @property
    def group(self) -> RankGroup:
        return self._group

    def restore(self) -> int | None:
        """Every rank restores the same checkpoint, refuses another world size, and starts
        from rank 0's weights.

        1. Load the newest valid checkpoint (a sharded model: this rank's own files); refuse
           it if another world size wrote it.
        2. Agree on the step: the ranks must have restored the same checkpoint (a run that has
           learned nothing yet takes the highest first version any rank saw on the snapshot
           topic, as a single trainer does).
        3. Seek this rank's partitions to their offsets in the checkpoint.
        4. Broadcast rank 0's parameters and buffers: identical starting weights everywhere
           (row-wise shards excepted: each rank keeps its own rows).
        """
        learner = self._learner
        state = self._checkpoints.load_latest(
            learner.model,
            learner.optimizer,
            learner.scheduler,
            world_size=self._group.world_size,
            rank=self._group.rank if self._sharded else 0,
        )
        positions = self._source.positions()
        step = self._first_version() if state is None else self._resumed_step(state)
        steps = torch.tensor([step, -step], dtype=torch.int64, device=self._comm)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        high, low = int(steps[0]), -int(steps[1])
        if state is not None and state.samples_seen and high != low:
            raise RuntimeError(
                f"ranks restored different checkpoints (steps {low} to {high}) from "
                f"{self._checkpoints.root}: every rank must read the same checkpoint directory"
            )
        shards = {id(p) for p in self._sharded}
        for tensor in [*learner.model.parameters(), *learner.model.buffers()]:
            if id(tensor) not in shards:
                dist.broadcast(tensor.data, src=0)
        learner.snapshot_good_state()
        # one run id on every rank: each sharded rank's snapshots name it (shard_snapshot.py)
        self._run_id = _leader_text(self._run_id if state is None else state.run_id, self._comm)
        if state is None:
            self._progress = TrainProgress(step=high, offsets=positions)
            self._mark_all(high, positions)
            return None
        own = {p: o for p, o in state.offsets.items() if p in positions}
        self._progress = TrainProgress(
            step=high,
            samples_seen=state.samples_seen,
            offsets={**positions, **own},
            watermark=state.data_watermark,
        )
        self._source.seek(own)
        self._mark_all(high, self._progress.offsets)
        log.info(
            "rank %d resumed run %s at step %d, offsets %s",
            self._group.rank,
            state.run_id,
            state.step,
            own,
        )
        return state.step

    def _mark_all(self, step: int, offsets: dict[int, int]) -> None:
        self._snapshot_policy.mark(step)
        self._checkpoint_policy.mark(step)
        self._checkpointed = (step, dict(offsets))

    def _loop(self, prefetch: PrefetchingSource) -> str:
        try:
            return self._lockstep(prefetch)
        except BaseException:
            # the other ranks are inside some collective: meeting them in _finish's would pair
            # mismatched collectives; this rank leaves and torchrun ends (or restarts) the group
            self._failed = True
            raise

    def _lockstep(self, prefetch: PrefetchingSource) -> str:
        stop = self._stop_conditions
        last_input = self._clock()
        throughput = ThroughputGauge(self._clock)
        while True:
            health.beat()
            if stop.max_samples is not None and self._progress.samples_seen >= stop.max_samples:
                return "max_samples"
            batch = self._next_contribution(prefetch)
            idle = stop.stop_when_idle is not None and (
                self._clock() - last_input >= stop.stop_when_idle
            )
            vote = self._vote(batch, idle)
            if vote[_STOP]:
                return "signal"
            if vote[_RECORDS]:
                last_input = self._clock()
            elif vote[_IDLE] == self._group.world_size:
                return "idle"
            if batch is not None:
                self._progress.offsets.update(batch.next_offsets)
                self._records_rejected += batch.records - batch.size
            throughput.add(0 if batch is None else batch.size)
            if vote[_SAMPLES]:
                local = batch if batch is not None and batch.size else self._empty_batch()
                self._train_on(local)
            self._maybe_snapshot()
            if vote[_CHECKPOINT]:
                self._checkpoint(prefetch)
            unsaved = self._unsaved_since
            metrics.CHECKPOINT_AGE.set(0.0 if unsaved is None else time.time() - unsaved)

    def _next_contribution(self, prefetch: PrefetchingSource) -> Batch | None:
        """This rank's batch for the next step, chosen by the log, not by timing.

        Step k pairs every rank's k-th batch holding samples, so a replay of the same log (a
        restart after a crash) pairs the same batches and rebuilds the same weights bit for
        bit. Batches are taken in order until one holds samples; reject-only ones are folded
        into it (their offsets and record counts). An empty batch cut while the log still
        held unfetched records (``backlog``) is waited past; one cut while caught up means
        this rank has nothing for the step. The exception: a backlog not delivered within
        ``_MAX_BACKLOG_WAIT`` seconds (a broker that stalls) is contributed as nothing, logged.
        """
        offsets: dict[int, int] = {}
        records = 0
        since = self._clock()
        while True:
            health.beat()
            batch = prefetch.get(timeout=POLL_SECONDS)
            if batch is not None:
                offsets.update(batch.next_offsets)
                records += batch.records
                if batch.size:
                    return replace(batch, next_offsets=offsets, records=records)
                if not batch.records and not batch.backlog:
                    return Batch.empty(offsets, records) if offsets else None
            if self._stop_requested.is_set():
                return Batch.empty(offsets, records) if offsets else None
            if self._clock() - since >= _MAX_BACKLOG_WAIT:
                log.warning(
                    "rank %d: records in the log not delivered within %.0f s; this step "
                    "goes on without them (a replay may pair batches differently here)",
                    self._group.rank,
                    _MAX_BACKLOG_WAIT,
                )
                return Batch.empty(offsets, records) if offsets else None

    def _vote(self, batch: Batch | None, idle: bool) -> list[int]:
        """Sum every rank's vote (one all-reduce of five integers)."""
        samples, records = (0, 0) if batch is None else (batch.size, batch.records)
        due = self._checkpoint_policy.expired(self._progress.step)
        ballot = torch.tensor(
            [samples, records, int(self._stop_requested.is_set()), int(idle), int(due)],
            dtype=torch.int64,
            device=self._comm,
        )
        dist.all_reduce(ballot)
        return [int(v) for v in ballot.tolist()]

    def _empty_batch(self) -> Batch:
        spec = self._learner.head.spec
        labels: np.ndarray[Any, Any] = (
            np.zeros((0, spec.target_dim), np.float32)
            if spec.task == "regression"
            else np.zeros((0,), np.int64)
        )
        return Batch(
            features=np.zeros((0, *spec.feature_shape), np.float32),
            labels=labels,
            weights=np.zeros((0,), np.float32),
            timestamps=np.zeros((0,), np.float64),
            next_offsets={},
            sparse=SparseRows.empty(spec.sparse_names) if spec.sparse else None,
        )

    def _checkpoint(self, prefetch: PrefetchingSource) -> None:
        progress = self._progress
        offsets = self._gather_offsets(progress.offsets)  # phase a: every rank's part
        rank_digests = self._stage_shards(progress.step) if self._sharded else None
        if self._group.is_leader:  # phase b: one writer, the rename commits
            state = TrainerState(
                step=progress.step,
                samples_seen=progress.samples_seen,
                run_id=self._run_id,
                offsets=offsets,
                model_settings=self._model_settings,
                data_watermark=progress.watermark,
                extra={"world_size": self._group.world_size},
            )
            self._checkpoints.save(state, *self._learner_parts(), rank_digests=rank_digests)
        dist.barrier()  # phase c: the commit exists before anyone relies on it
        self._checkpoint_policy.mark(progress.step)
        self._unsaved_since = None
        self._checkpointed = (progress.step, dict(progress.offsets))
        own = {p: o for p, o in progress.offsets.items() if p in self._source.positions()}
        prefetch.request_commit(own)

    def _maybe_snapshot(self, force: bool = False) -> None:
        """Replicated weights: rank 0 publishes alone. Row-wise shards: rank 0 decides and
        broadcasts the decision, then every rank publishes its shard (:mod:`.shard_snapshot`)."""
        if not self._sharded:
            super()._maybe_snapshot(force)
            return
        sink = self._sink
        if force and isinstance(sink, SnapshotPublisher):
            sink.flush(_FINAL_FLUSH_S)  # the final snapshot: let every queue drain first
        backlog = sink.backlog() if isinstance(sink, SnapshotPublisher) else "none"
        due = self._group.is_leader and self._snapshot_due(force)
        created_at = agree_on_snapshot(due, backlog == "queued", self._comm)
        if created_at is None:
            return
        model = self._learner.model
        taken = take_shard(
            model,
            self._row_tracker,
            sharded_names(model),
            self._group.rank,
            self._comm,
            after_failure=backlog == "failed",
        )
        self._publish(taken, created_at)

    def _stage_shards(self, step: int) -> dict[int, dict[str, str]]:
        """Every rank but 0 stages its own model and optimizer files for ``step``; rank 0
        gets their digests by rank. The all-gather returns only once every rank has staged."""
        packed = torch.zeros((len(SHARD_FILES), 32), dtype=torch.uint8)
        if not self._group.is_leader:
            model, optimizer, _ = self._learner_parts()
            digests = stage_shard(self._checkpoints.root, step, self._group.rank, model, optimizer)
            packed = digests_to_tensor(digests)
        packed = packed.to(self._comm)
        gathered = [torch.empty_like(packed) for _ in range(self._group.world_size)]
        dist.all_gather(gathered, packed)
        return {
            r: tensor_to_digests(r, gathered[r].cpu()) for r in range(1, self._group.world_size)
        }

    def _gather_offsets(self, mine: dict[int, int]) -> dict[int, int]:
        values = [mine.get(p, -1) for p in self._all_partitions]
        slots = torch.tensor(values, dtype=torch.int64, device=self._comm)
        dist.all_reduce(slots, op=dist.ReduceOp.MAX)
        return {
            p: int(o) for p, o in zip(self._all_partitions, slots.tolist(), strict=True) if o >= 0
        }

    def _finish(self, prefetch: PrefetchingSource) -> None:
        """Graceful end on every rank together (the single trainer's, with the decision
        below); after a failed rank only the local resources are closed."""
        if self._failed:
            self._close(prefetch)
            return
        super()._finish(prefetch)

    def _needs_checkpoint(self) -> bool:
        """Checkpoint on every rank if any rank has something unsaved: one vote."""
        unsaved = int(super()._needs_checkpoint())
        flag = torch.tensor([unsaved], dtype=torch.int64, device=self._comm)
        dist.all_reduce(flag)
        return bool(int(flag))


def _leader_text(text: str, comm: torch.device, limit: int = 255) -> str:
    """Rank 0's ``text`` (at most ``limit`` UTF-8 bytes) on every rank, without pickle."""
    raw = list(text.encode()[:limit])
    packed = [len(raw), *raw, *[0] * (limit - len(raw))]
    tensor = torch.tensor(packed, dtype=torch.uint8, device=comm)
    dist.broadcast(tensor, src=0)
    values = tensor.cpu().tolist()
    return bytes(values[1 : values[0] + 1]).decode(errors="replace")
