"""What a step trains on: the task loss of the model's output, or of the layers inside it.

Two built-in layers change what the loss sees:

* a :class:`TargetStandardize` (regression ``scale_targets``): the loss compares its *input*
  (the network's standardised output) with the standardised targets, after folding the step's
  targets into its statistics;
* a :class:`HedgeMixer` (``auto``): every head is trained on its own loss, computed from the
  mixer's input ``[n, width, heads]``; the mixed output's loss is what is reported, and after
  an applied step the heads' loss sums (or, under the mixer's ``error`` criterion, their
  wrong predictions) move the mixer's weights.

Both inputs are captured for one forward only (:mod:`.models._capture`), so the model never
holds a reference to the learner (a deep copy of the model stays a plain model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from streamtrain.train.head_loss import heads_loss
from streamtrain.train.models.hedge import HedgeMixer, find_mixer
from streamtrain.train.models.target_scale import TargetStandardize, find_target_scaler
from streamtrain.train.task import TaskHead


@dataclass(frozen=True)
class StepLoss:
    """``train``: what backward runs on; ``reported``: the sample-weighted mean loss of the
    model's prediction (the same tensor unless the model mixes heads); ``head_sums``: the
    heads' sample-weighted sums of the mixer's criterion (task loss or wrong predictions) for
    :meth:`Objective.after_step`, or None."""

    train: torch.Tensor
    reported: torch.Tensor
    head_sums: torch.Tensor | None = None


class Objective:
    """The loss of one step for ``model`` under ``head``'s task."""

    def __init__(self, model: nn.Module, head: TaskHead) -> None:
        self.head = head
        self.targets: TargetStandardize | None = find_target_scaler(model)
        self.mixer: HedgeMixer | None = find_mixer(model)
        self._layers = [
            (name, layer)
            for name, layer in (("targets", self.targets), ("mixer", self.mixer))
            if layer is not None
        ]
        self._captured: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """While open, keep the inputs of the target scaler and the mixer of one forward."""
        self._captured.clear()
        if not self._layers:
            yield
            return
        slots: list[tuple[str, list[torch.Tensor]]] = []
        for name, layer in self._layers:
            slots.append((name, []))
            layer.lend_slot(slots[-1][1])
        try:
            yield
        finally:
            for _name, layer in self._layers:
                layer.lend_slot(None)
        for name, seen in slots:
            if len(seen) > 1:
                raise RuntimeError(
                    f"the model's {name} layer ran twice in one forward; it must run exactly once"
                )
            if seen:
                self._captured[name] = seen[0]

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> StepLoss:
        if self.targets is None and self.mixer is None:
            plain = self.head.loss(outputs, labels, weights)
            return StepLoss(plain, plain)
        for name, layer in (("targets", self.targets), ("mixer", self.mixer)):
            if layer is not None and name not in self._captured:
                raise RuntimeError(f"the model's {name} layer did not run in its forward")
        if self.targets is not None:
            targets = labels.to(self.targets.mean.dtype).reshape(outputs.shape)
            self.targets.observe(targets)
            labels = self.targets.standardize(targets)
            outputs = self._captured["targets"]
        if self.mixer is None:
            plain = self.head.loss(outputs, labels, weights)
            return StepLoss(plain, plain)
        return self._head_losses(self._captured["mixer"], outputs, labels, weights)

    def _head_losses(
        self, heads: torch.Tensor, mixed: torch.Tensor, labels: torch.Tensor, w: torch.Tensor
    ) -> StepLoss:
        """Every head's loss in one call of the task loss: heads last, ``[n, width, heads]``,
        labels broadcast along them (cross entropy reads extra dims as more positions)."""
        task = self.head.spec.task
        count = heads.shape[-1]
        if task == "binary":
            heads = heads.squeeze(1)
            # as floats once: both losses below would each convert them
            labels = labels.to(torch.float32)
            labels_k = labels[:, None].expand(-1, count)
        elif task == "multiclass":
            labels_k = labels[:, None].expand(-1, count)
        else:
            labels_k = labels.reshape(heads.shape[:2])[..., None].expand(-1, -1, count)
        w = w.to(torch.float32)
        column = w[:, None]
        total = w.sum().clamp_min(1e-12)
        if task == "regression":
            per = self.head.per_sample_loss(heads, labels_k)  # [n, heads]
            sums = (per * column).sum(dim=0)
            train = sums.sum() / total
        else:  # the loss and its gradient in one autograd node (head_loss.py)
            train, sums = heads_loss(heads.float(), labels_k, column, total, task != "binary")
        assert self.mixer is not None
        # the mixed prediction's loss, as TaskHead.loss computes any model's (the total shared):
        # the mix is computed from detached heads, so this records no graph and needs no
        # no_grad() block (one more call in a batch-1 step of ~150)
        reported = self._reported_sum(mixed, labels, w) / total
        if self.mixer.criterion == "error":  # each head's weighted wrong predictions
            # a bool compared with the int64 labels, and a bool times the float weights:
            # the promotions happen inside the one kernel each
            wrong = (heads > 0) != labels_k if task == "binary" else heads.argmax(1) != labels_k
            mix_sums = (wrong * column).sum(dim=0)
        else:
            mix_sums = sums.detach()
        return StepLoss(train, reported, mix_sums)

    def _reported_sum(
        self, mixed: torch.Tensor, labels: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """``sum(w * loss)`` of the mixed prediction; binary in one call (BCE weighs and sums
        inside, the same products and sum as ``TaskHead.loss``)."""
        if self.head.loss_name == "bce":
            return F.binary_cross_entropy_with_logits(
                mixed.float(), labels, weight=w, reduction="sum"
            )
        return (self.head.per_sample_loss(mixed, labels) * w).sum()

    def after_step(self, loss: StepLoss, samples: int) -> None:
        """An applied step's head losses move the mixer (every rank alike, see hedge.py)."""
        if self.mixer is not None and loss.head_sums is not None:
            self.mixer.observe(loss.head_sums, samples)
