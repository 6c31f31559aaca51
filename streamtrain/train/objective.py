"""What a step trains on: the task loss of the model's output, or of the layers inside it.

Two built-in layers change what the loss sees:

* a :class:`TargetStandardize` (regression ``scale_targets``): the loss compares its *input*
  (the network's standardised output) with the standardised targets, after folding the step's
  targets into its statistics;
* a :class:`HedgeMixer` (``auto``): every head is trained on its own loss, computed from the
  mixer's input ``[n, width, heads]``; the mixed output's loss is what is reported, and after
  an applied step the heads' loss sums (or, under the mixer's ``error`` criterion, their
  wrong predictions) move the mixer's weights.

Both inputs are captured by forward hooks that live for one forward only, so the model never
holds a reference to the learner (a deep copy of the model stays a plain model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

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
        self._captured: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """While open, keep the inputs of the target scaler and the mixer of one forward."""
        self._captured.clear()
        handles = []
        for name, layer in (("targets", self.targets), ("mixer", self.mixer)):
            if layer is not None:
                handles.append(layer.register_forward_hook(self._keep(name)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _keep(self, name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], object], None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], _out: object) -> None:
            if name in self._captured:
                raise RuntimeError(
                    f"the model's {name} layer ran twice in one forward; it must run exactly once"
                )
            self._captured[name] = args[0]

        return hook

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
        count = heads.shape[-1]
        if self.head.spec.task == "binary":
            heads = heads.squeeze(1)
            labels_k = labels[:, None].expand(-1, count)
        elif self.head.spec.task == "multiclass":
            labels_k = labels[:, None].expand(-1, count)
        else:
            labels_k = labels.reshape(heads.shape[:2])[..., None].expand(-1, -1, count)
        per = self.head.per_sample_loss(heads, labels_k)  # [n, heads]
        w = w.to(per.dtype)
        sums = (per * w[:, None]).sum(dim=0)
        total = w.sum().clamp_min(1e-12)
        assert self.mixer is not None
        with torch.no_grad():
            if self.head.spec.task == "regression":
                reported = self.head.loss(mixed, labels, w)
            else:  # log loss of the mix, from the heads' log losses
                reported = (self.mixer.mixed_loss(per) * w).sum() / total
            mix_sums = sums.detach()
            if self.mixer.criterion == "error":  # each head's weighted wrong predictions
                guess = (heads > 0).long() if self.head.spec.task == "binary" else heads.argmax(1)
                mix_sums = ((guess != labels_k).to(per.dtype) * w[:, None]).sum(dim=0)
        return StepLoss(sums.sum() / total, reported, mix_sums)

    def after_step(self, loss: StepLoss, samples: int) -> None:
        """An applied step's head losses move the mixer (every rank alike, see hedge.py)."""
        if self.mixer is not None and loss.head_sums is not None:
            self.mixer.observe(loss.head_sums, samples)
