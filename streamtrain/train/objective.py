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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from streamtrain.train.head_loss import heads_loss
from streamtrain.train.models.hedge import HeadsSeen, HedgeMixer, find_mixer
from streamtrain.train.models.target_scale import TargetStandardize, find_target_scaler
from streamtrain.train.task import TaskHead
from streamtrain.train.wide_head import classification_loss, linear_grads, regression_loss


@dataclass(frozen=True)
class StepLoss:
    """``train``: what backward runs on, a scalar loss, or (with ``train_grad``) a tensor
    whose loss gradient ``train_grad`` is known in closed form; ``reported``: the
    sample-weighted mean loss of the model's prediction (the same tensor unless the model mixes
    heads); ``head_sums``: the heads' sample-weighted sums of the mixer's criterion (task loss
    or wrong predictions) for :meth:`Objective.after_step`, or None."""

    train: torch.Tensor
    reported: torch.Tensor
    head_sums: torch.Tensor | None = None
    train_grad: torch.Tensor | None = None


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
        # the target scaler's input tensor, the mixer's HeadsSeen
        self._captured: dict[str, Any] = {}
        self._classes: torch.Tensor | None = None  # multiclass: see _class_index
        # auto's linear head (weight, bias) when it learns in closed form (wide_head.py)
        self._linear = _closed_form_linear_head(model)
        # the learner's fp16 loss scaler: the closed-form gradients are scaled as backward's
        # are, since the scaler unscales every gradient of the optimizer's parameters
        self.scaler: torch.amp.GradScaler | None = None

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """While open, keep the inputs of the target scaler and the mixer of one forward."""
        self._captured.clear()
        if not self._layers:
            yield
            return
        slots: list[tuple[str, list[Any]]] = []
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
        seen = self._captured["mixer"]
        assert isinstance(seen, HeadsSeen)
        return self._head_losses(seen, outputs, labels, weights)

    def _head_losses(
        self, seen: HeadsSeen, mixed: torch.Tensor, labels: torch.Tensor, w: torch.Tensor
    ) -> StepLoss:
        """Every head's loss in one call: heads last, ``[n, width, heads]`` (binary ``[n,
        heads]``), labels broadcast along them."""
        assert self.mixer is not None
        if seen.features is not None:
            return self._closed_form_losses(seen, mixed, labels, w)
        if self.head.spec.task == "regression":
            return self._regression_head_losses(seen.stacked, mixed, labels, w)
        stacked = seen.stacked
        # the mix's sigmoid / log-softmax, unless autocast made the heads another dtype
        activated = seen.activated if stacked.dtype == torch.float32 else None
        stacked = stacked.float()
        count = stacked.shape[-1]
        w = w.to(torch.float32)
        total = w.sum().clamp_min(1e-12)
        normalised = w / total  # once, for the loss, its gradient and the reported loss
        binary = self.head.spec.task == "binary"
        if binary:
            labels = labels.to(torch.float32)  # as floats once: both losses below use them
            labels_k = labels[:, None].expand(-1, count)
            train, sums = heads_loss(stacked, activated, labels_k, normalised[:, None], seen.heads)
        else:
            labels_k = labels.view(-1, 1, 1)
            # minus each sample's weight at its label: the loss, and its gradient as it is
            at_label = (labels_k == self._class_index(stacked)) * normalised.view(-1, 1, 1).neg()
            train, sums = heads_loss(stacked, activated, at_label, None, seen.heads)
        # the mixed prediction's loss (the mix has no graph: nothing recorded here)
        mixed = mixed.float()
        if binary:  # BCE weighs and sums inside
            reported = F.binary_cross_entropy_with_logits(
                mixed, labels, weight=normalised, reduction="sum"
            )
        else:  # the mix's logits are log-probabilities already: no log_softmax
            reported = torch.dot(F.nll_loss(mixed, labels, reduction="none"), normalised)
        if self.mixer.criterion == "error":  # each head's weighted wrong predictions
            # a bool compared with the labels, and a bool times the float weights: the
            # promotions happen inside the one kernel each
            if binary:
                mix_sums = (((stacked > 0) != labels_k) * w[:, None]).sum(dim=0)
            else:
                wrong = stacked.argmax(dim=1, keepdim=True) != labels_k  # [n, 1, heads]
                mix_sums = (wrong * w.view(-1, 1, 1)).sum(dim=(0, 1))
        else:
            mix_sums = sums * total
        return StepLoss(train, reported, mix_sums)

    def _closed_form_losses(
        self, seen: HeadsSeen, mixed: torch.Tensor, labels: torch.Tensor, w: torch.Tensor
    ) -> StepLoss:
        """Both heads' loss gradients in closed form (:mod:`.wide_head`): the linear head's
        (it has no graph) turned into its weights' gradients here, the MLP head's handed to
        backward, which starts from that head's output."""
        assert self.mixer is not None and seen.features is not None
        if self._linear is None or len(seen.heads) != 2:
            raise RuntimeError(
                "the model's mixer gave the linear head's features, but the model holds no "
                "closed-form linear head (closed_form_linear_head) or not exactly two heads"
            )
        if self.head.spec.task == "regression":
            parts = regression_loss(seen, mixed, labels, w, self.head)
        else:
            parts = classification_loss(seen, mixed, labels, w, self.mixer.criterion)
        grads = linear_grads(parts.grad_out, seen.features)
        if self.scaler is not None:
            grads = self.scaler.scale(grads)
        for param, grad in zip(self._linear, grads, strict=True):
            param.grad = grad
        return StepLoss(parts.train, parts.reported, parts.head_sums, parts.train_grad)

    def _class_index(self, stacked: torch.Tensor) -> torch.Tensor:
        """``[1, classes, heads]``: each class's index, along every head, on the heads'
        device; made once (a constant), so comparing labels with it costs one kernel."""
        index = self._classes
        shape = stacked.shape[1:]
        if index is None or index.shape[1:] != shape or index.device != stacked.device:
            classes, heads = shape
            index = torch.arange(classes, device=stacked.device)[None, :, None]
            index = index.expand(1, classes, heads).contiguous()
            self._classes = index
        return index

    def _regression_head_losses(
        self, heads: torch.Tensor, mixed: torch.Tensor, labels: torch.Tensor, w: torch.Tensor
    ) -> StepLoss:
        """``heads`` ``[n, width, heads]`` with the graph: the task loss through autograd."""
        count = heads.shape[-1]
        labels_k = labels.reshape(heads.shape[:2])[..., None].expand(-1, -1, count)
        w = w.to(torch.float32)
        total = w.sum().clamp_min(1e-12)
        per = self.head.per_sample_loss(heads, labels_k)  # [n, heads]
        sums = (per * w[:, None]).sum(dim=0)
        train = sums.sum() / total
        # the mixed prediction's loss, as TaskHead.loss computes any model's (the total shared)
        reported = (self.head.per_sample_loss(mixed, labels) * w).sum() / total
        return StepLoss(train, reported, sums.detach())

    def after_step(self, loss: StepLoss, samples: int) -> None:
        """An applied step's head losses move the mixer (every rank alike, see hedge.py)."""
        if self.mixer is not None and loss.head_sums is not None:
            self.mixer.observe(loss.head_sums, samples)


def _closed_form_linear_head(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(weight, bias)`` of the model's linear head that learns in closed form (``auto``
    under the Hedge mix with ``linear_lr`` set: models/auto.py), or None."""
    for module in model.modules():
        found = getattr(module, "closed_form_linear_head", None)
        if callable(found):
            head = found()
            if head is not None:
                return head  # type: ignore[no-any-return]
    return None
