"""The learning step: test-then-train on one micro-batch, guarded against non-finite steps."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from streamtrain import metrics
from streamtrain.sample.sparse_torch import SparseInput
from streamtrain.train.guard import BadStepGuard, GoodState, Verdict
from streamtrain.train.model_traits import check_sparse_gradients, train_mode_differs
from streamtrain.train.objective import Objective, StepLoss
from streamtrain.train.optim import StepLrScales
from streamtrain.train.statistics_undo import StatisticsUndo
from streamtrain.train.step_size import StepSamples, max_step_samples
from streamtrain.train.table_upkeep import TableUpkeep
from streamtrain.train.task import TaskHead


@dataclass(frozen=True)
class StepOutcome:
    """What one ``learn`` call did. Tensors stay on the device: the caller picks when to sync.

    ``loss`` is the sample-weighted mean loss (0-dim; for a model that scales its regression
    targets, on the standardised scale it is trained on); ``score_sum`` the sum of per-sample
    prequential scores (correct predictions, or absolute errors) of the weights *before* the
    step; ``applied`` whether an optimizer step was taken; ``steps`` how many were (a batch
    split into several steps, see :mod:`.step_size`; ``loss`` is then their size-weighted mean).
    """

    loss: torch.Tensor
    score_sum: torch.Tensor
    samples: int
    applied: bool
    steps: int = 1

    def then(self, later: StepOutcome) -> StepOutcome:
        """This step's outcome followed by ``later``'s, as one outcome for the whole batch."""
        samples = self.samples + later.samples
        loss = (self.loss * self.samples + later.loss * later.samples) / samples
        return StepOutcome(
            loss=loss,
            score_sum=self.score_sum + later.score_sum,
            samples=samples,
            applied=self.applied or later.applied,
            steps=self.steps + later.steps,
        )


class StepReducer(Protocol):
    """Makes one step of several processes equal a step on the union of their batches
    (``streamtrain.distributed.step_sync.GradientSync``)."""

    def reduce(
        self,
        params: Sequence[nn.Parameter],
        loss: torch.Tensor,
        weights: torch.Tensor,
        score_sum: torch.Tensor,
        samples: int,
    ) -> tuple[torch.Tensor, torch.Tensor, int]: ...

    def gather_ids(self, ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor concatenated over every rank, in rank order (dynamic tables decide on
        the union batch's IDs)."""
        ...


class Learner:
    """Model + task head + optimizer + schedule + clipping + the non-finite guard.

    >>> from streamtrain.sample.spec import SampleSpec
    >>> spec = SampleSpec(feature_shape=(3,), task="binary")
    >>> model = nn.Linear(3, 1)
    >>> learner = Learner(
    ...     nn.Sequential(model, nn.Flatten(0)), TaskHead(spec),
    ...     torch.optim.SGD(model.parameters(), lr=0.1),
    ... )
    >>> out = learner.learn(torch.randn(8, 3), torch.ones(8, dtype=torch.long), torch.ones(8))
    >>> out.applied, out.samples
    (True, 8)
    """

    def __init__(
        self,
        model: nn.Module,
        head: TaskHead,
        optimizer: Optimizer,
        scheduler: LRScheduler | None = None,
        *,
        clip_grad_norm: float | None = None,
        max_bad_steps: int = 3,
        autocast_dtype: torch.dtype | None = None,
        device: torch.device = torch.device("cpu"),
        good_state_every: int = 100,
        step_samples: StepSamples = "batch",
        step_lr_scales: StepLrScales | None = None,
    ) -> None:
        if clip_grad_norm is not None and clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be positive or None, got {clip_grad_norm}")
        if good_state_every < 1:
            raise ValueError(f"good_state_every must be >= 1, got {good_state_every}")
        self.model = model
        self.head = head
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.clip_grad_norm = clip_grad_norm
        self.autocast_dtype = autocast_dtype
        self.good_state_every = good_state_every
        self.step_samples = step_samples
        max_step_samples(step_samples, 0)  # validates the rule now, not at the first batch
        # per-group learning-rate multipliers for a step's samples (optim.step_lr_scales)
        self.step_lr_scales = step_lr_scales
        self._steps_without_schedule = 0
        # set on the ranks of a distributed trainer: every rank then steps on every call, even
        # with an empty batch, and the outcome describes the union of the ranks' batches
        self.step_reducer: StepReducer | None = None
        self._params = [p for p in model.parameters() if p.requires_grad]
        check_sparse_gradients(model, optimizer, clip_grad_norm)
        self._separate_eval_pass = train_mode_differs(model)
        self._tables = TableUpkeep.find(model, optimizer)
        self._objective = Objective(model, head)
        self._guard = BadStepGuard(max_bad_steps)
        self._good = GoodState(model, optimizer)
        self._good_steps_since_save = 0
        self._statistics = StatisticsUndo(model, head)
        # fp16 needs loss scaling; bf16 has float32's range and does not
        self._scaler = (
            torch.amp.GradScaler(self.device.type) if autocast_dtype == torch.float16 else None
        )
        self._objective.scaler = self._scaler  # closed-form gradients are scaled too
        model.train()
        self.snapshot_good_state()

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def consecutive_bad_steps(self) -> int:
        return self._guard.consecutive_bad

    def learn(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        sparse: SparseInput | None = None,
    ) -> StepOutcome:
        """Test, then train, on one fetched micro-batch, in as many steps as ``step_samples``
        asks (:mod:`.step_size`): each part is scored just before its own step, so every
        sample is predicted by weights that have not learned from it.

        A batch with ``sparse`` ID features, or on a distributed rank (``step_reducer``), is
        one step: ranks step in lockstep, whatever their batch sizes. An empty batch does
        nothing and reports ``applied=False`` without counting as bad, except with a
        ``step_reducer`` (see :meth:`_step`).
        """
        samples = int(features.shape[0])
        if samples == 0 and self.step_reducer is None:
            zero = torch.zeros((), device=self.device)
            return StepOutcome(loss=zero, score_sum=zero, samples=0, applied=False, steps=0)
        x = features.to(self.device, non_blocking=True)
        y = labels.to(self.device, non_blocking=True)
        w = weights.to(self.device, non_blocking=True)
        if sparse is not None or self.step_reducer is not None:
            return self._step(x, y, w, sparse)
        outcome: StepOutcome | None = None
        start = 0
        while start < samples:
            most = max_step_samples(self.step_samples, self._steps_taken())
            end = samples if most is None else min(samples, start + most)
            part = self._step(x[start:end], y[start:end], w[start:end], None)
            outcome = part if outcome is None else outcome.then(part)
            start = end
        assert outcome is not None  # samples > 0: the loop ran
        return outcome

    def _steps_taken(self) -> int:
        # the schedule's step count is checkpointed; without a schedule nothing is resumed
        if self.scheduler is not None:
            return int(self.scheduler.last_epoch)
        return self._steps_without_schedule

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, sparse: SparseInput | None
    ) -> StepOutcome:
        """Test, then train, on one step's samples, already on the device (``sparse``: their
        sparse ID features, for a model that declares them; it is then called
        ``model(features, sparse)``).

        1. Prequential test: score the batch with the weights as they are *before* this step.
           A model without dropout or batch norm computes the same function in train and eval
           mode, so the training forward's outputs serve as the test and no second pass is
           spent. Otherwise a separate eval-mode, no-grad forward runs first, so the score is
           not noisy from dropout and batch-norm running stats are not updated twice.
        2. Loss (sample-weighted mean), backward, optional gradient-norm clipping. A model with
           a target scaler (regression built-ins, ``scale_targets``) first folds this step's
           targets into its statistics, then the loss compares the network's standardised
           output with the standardised targets; the score (step 1) stays in target units.
           A model that mixes heads (``auto``) trains each head on its own loss and reports
           the mixed prediction's loss (:mod:`.objective`); an applied step then moves the mix.
        3. Guard: ONE host synchronization per step reads a single flag combining "loss is
           finite" and "total gradient norm is finite" (a non-finite gradient makes the norm
           non-finite). A bad step is not applied: gradients are dropped and it is counted
           (``streamtrain_train_skipped_updates``); the ``max_bad_steps``-th bad step in a row
           restores the last good model and optimizer state
           (``streamtrain_train_rollbacks``).
        4. A good step: every ``good_state_every`` good steps the current (pre-step) state is
           saved as the last good one — it has just produced a finite loss and gradients, which
           the post-step state has not yet shown; then optimizer step (each parameter group at
           its rate times ``step_lr_scales(samples)``, when given) and scheduler step.

        With a ``step_reducer`` (a distributed rank), 2b. all-reduces the gradients, even for
        an empty batch (the other ranks' batches still make a step), and the outcome is the
        union batch's.

        A model with dynamic embedding tables first admits and evicts IDs for this step
        (:mod:`.table_upkeep`; on a rank, from the union batch's IDs), so step 1 already reads
        the rows of IDs admitted now: that uses the batch's IDs, never its labels.
        """
        samples = int(x.shape[0])
        if self._tables is not None:  # admissions and evictions, before any forward reads them
            reducer = self.step_reducer
            self._tables.before_step(sparse, None if reducer is None else reducer.gather_ids)

        def forward() -> torch.Tensor:
            out: torch.Tensor = self.model(x) if sparse is None else self.model(x, sparse)
            return out

        score_sum: torch.Tensor | None = None
        if self._separate_eval_pass:
            self.model.eval()
            with torch.no_grad(), self._autocast():
                score_sum = self.head.score(forward(), y).sum()
            self.model.train()

        self.optimizer.zero_grad(set_to_none=True)
        self._statistics.remember()  # a rejected step leaves the running statistics alone
        with self._autocast(), self._objective.capture():
            outputs = forward()
        if score_sum is None:
            score_sum = self.head.score(outputs, y).sum()
        step_loss = self._objective.loss(outputs, y, w)
        self._backward(step_loss.train, step_loss.train_grad)
        loss = step_loss.reported
        if self.step_reducer is not None:
            loss, score_sum, samples = self.step_reducer.reduce(
                self._params, loss.detach(), w, score_sum.detach(), samples
            )
        applied = self._guard_and_apply(loss, step_loss, samples)
        return StepOutcome(
            loss=loss.detach(),
            score_sum=score_sum.detach(),
            samples=samples,
            applied=applied,
            steps=int(applied),
        )

    def _guard_and_apply(self, loss: torch.Tensor, step_loss: StepLoss, samples: int) -> bool:
        """Steps 3 and 4 of :meth:`_step`: judge the step with one host sync, then apply it or
        reject it; True when applied."""
        grad_norm = self._grad_norm()
        # loss + norm is finite exactly when both are (NaN and inf propagate through +); a
        # closed-form gradient (train_grad) is in the norm, and its output in the reported loss
        check = loss.detach()
        if step_loss.train_grad is None:
            check = check + step_loss.train.detach()
        check = check if grad_norm is None else check + grad_norm
        verdict = self._guard.judge(bool(torch.isfinite(check).item()))  # the one host sync
        if verdict is Verdict.APPLY:
            self._apply(samples)
            self._objective.after_step(step_loss, samples)
        else:
            self._reject(verdict)
        return verdict is Verdict.APPLY

    def snapshot_good_state(self) -> None:
        """Remember the current model and optimizer state as the last good one (device copy)."""
        self._good.save()
        self._good_steps_since_save = 0

    def restore_last_good(self) -> None:
        """Copy the last good model and optimizer state back in place.

        The step counter and the schedule keep going forward: versions never move back.
        """
        self._good.restore()
        self.optimizer.zero_grad(set_to_none=True)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _backward(self, loss: torch.Tensor, grad: torch.Tensor | None) -> None:
        """Backward from the scalar ``loss``, or from the tensor ``loss`` with its closed-form
        loss gradient ``grad`` (:class:`StepLoss`)."""
        if self._scaler is None:
            torch.autograd.backward(loss, grad)
            return
        if grad is not None:  # the gradient is what the loss's would be: scaled the same
            torch.autograd.backward(loss, self._scaler.scale(grad))
        else:
            torch.autograd.backward(self._scaler.scale(loss))
        self._scaler.unscale_(self.optimizer)  # clip and check the true gradients

    def _grad_norm(self) -> torch.Tensor | None:
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return None
        if self.clip_grad_norm is not None:
            # clip_grad_norm_ returns the pre-clip total norm: clipping and the check share it
            return torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
        # a sparse (row-wise) gradient's norm is that of its values, summed per row first
        dense = [g for g in grads if not g.is_sparse]
        # one call for every dense gradient (what clip_grad_norm_ uses), not one per tensor
        norms = list(torch._foreach_norm(dense)) if dense else []
        norms += [g.coalesce().values().norm() for g in grads if g.is_sparse]
        total: torch.Tensor = torch.linalg.vector_norm(torch.stack(norms))
        return total

    def _apply(self, samples: int) -> None:
        self._good_steps_since_save += 1
        if self._good_steps_since_save >= self.good_state_every:
            self.snapshot_good_state()
        groups = self.optimizer.param_groups
        scheduled = [group["lr"] for group in groups]
        # a distributed rank steps once per union batch at the scheduled rate (step_size.py)
        if self.step_lr_scales is not None and self.step_reducer is None:
            for group, scale in zip(groups, self.step_lr_scales(samples), strict=True):
                group["lr"] = group["lr"] * scale
        try:
            if self._scaler is not None:
                self._scaler.step(self.optimizer)
                self._scaler.update()
            else:
                self.optimizer.step()
        finally:  # the scaled rate is this step's only: checkpoints keep the scheduled one
            for group, lr in zip(groups, scheduled, strict=True):
                group["lr"] = lr
        if self.scheduler is not None:
            self.scheduler.step()
        else:
            self._steps_without_schedule += 1

    def _reject(self, verdict: Verdict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._statistics.undo()
        if self._scaler is not None:
            # unscale_ recorded the overflow: update() lowers the scale for the next step
            self._scaler.update()
        metrics.TRAIN_SKIPPED_UPDATES.inc()
        if verdict is Verdict.ROLLBACK:
            self.restore_last_good()
            metrics.TRAIN_ROLLBACKS.inc()
