"""Combining a model's heads online: Hedge over their exponentially discounted prequential loss.

A model with several heads (``auto``: a linear head and an MLP head) ends in a
:class:`HedgeMixer`. Every head is trained on its own loss each step; the mixer keeps each
head's loss on the samples it has predicted *before* learning from them, discounted by
``1 - 1/window`` per sample, and weighs head ``k`` by ``softmax(-eta * loss)_k`` (Hedge,
Freund & Schapire 1997, with the discount of a sliding window so the weights can move back
when the stream drifts). The loss the mix counts is ``criterion``: a classification head's
wrong predictions (``error``, what ``auto`` uses) or the task loss it trains on (``task``,
always for regression). Classification mixes the heads' probabilities (the returned logits
are the log of the mixed probabilities), regression their standardised values. The discounted
losses are buffers: snapshots carry the mix to the servers and checkpoints restore it.

The learner (:mod:`streamtrain.train.objective`) computes the per-head losses from this
layer's input and calls :meth:`HedgeMixer.observe` after each applied step; on a distributed
rank ``loss_sync`` (set by :func:`streamtrain.distributed.step_sync.attach_loss_sync`)
all-reduces the loss sums first, so every rank moves the weights identically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._capture import CapturesInput

# per-head sums of sample-weighted losses -> the same sums over every rank's batch
LossSync = Callable[[torch.Tensor], torch.Tensor]

# error: a classification head's loss for the mix is its wrong predictions (0 or 1 per
# sample); task: the task loss it trains on. Regression always uses the task loss.
Criterion = Literal["error", "task"]


class HedgeMixer(nn.Module, CapturesInput):
    """Mix ``[n, width, heads]`` head outputs into ``[n, width]`` by Hedge weights (heads
    last, so the per-head losses are one call of the task's loss, see objective.py).

    >>> spec = SampleSpec(feature_shape=(2,), task="binary")
    >>> mixer = HedgeMixer(2, spec, eta=1.0, window=1000)
    >>> mixer.weights().tolist()
    [0.5, 0.5]
    >>> mixer.observe(torch.tensor([0.0, 5.0]), samples=10)
    >>> [round(w, 3) for w in mixer.weights().tolist()]
    [0.993, 0.007]
    """

    loss_sync: LossSync | None
    losses: torch.Tensor  # a buffer: each head's discounted prequential loss

    def __init__(
        self,
        heads: int,
        spec: SampleSpec,
        *,
        eta: float,
        window: int,
        criterion: Criterion = "task",
    ) -> None:
        super().__init__()
        if heads < 1 or eta <= 0 or window < 1:
            raise ValueError(f"HedgeMixer needs heads >= 1, eta > 0, window >= 1: {heads}, {eta}")
        if criterion not in ("error", "task"):
            raise ValueError(f"HedgeMixer criterion must be 'error' or 'task', got {criterion!r}")
        self.task = spec.task
        # why errors by default (docs/models.md): a head with the better accuracy can have the
        # worse log loss (an SGD linear head is less confident than an Adam MLP early on), and
        # the stream is scored by accuracy
        self.criterion: Criterion = "task" if spec.task == "regression" else criterion
        self.eta = eta
        self.discount = 1.0 - 1.0 / window
        self.loss_sync = None
        self.register_buffer("losses", torch.zeros(heads))
        # (losses tensor, its version, log weights) in one attribute, so threads serving at
        # once read a triple that belongs together; holding the tensor keeps its address from
        # being reused by another
        self._kept_log_w: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (
            f"heads={self.losses.numel()}, task={self.task}, eta={self.eta}, "
            f"criterion={self.criterion}"
        )

    def log_weights(self) -> torch.Tensor:
        """``log softmax(-eta * losses)``, kept while the losses are unchanged: a training
        step reads it twice (the mix, the mixed loss) and a served model on every request."""
        losses = self.losses
        if losses.is_inference() or torch.is_inference_mode_enabled():
            # an inference tensor keeps no version counter, and one made now must not be
            # kept for a later step that records a graph
            return torch.log_softmax(-self.eta * losses, dim=0)
        kept = self._kept_log_w
        if kept is not None and kept[0] is losses and kept[1] == losses._version:
            return kept[2]
        log_w = torch.log_softmax(-self.eta * losses, dim=0)
        self._kept_log_w = (losses, losses._version, log_w)
        return log_w

    def weights(self) -> torch.Tensor:
        return self.log_weights().exp()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.keep_input(z)  # the heads learn from their own losses (objective.py) ...
        z = z.detach()  # ... never through the mix
        log_w = self.log_weights()
        if log_w.dtype != z.dtype:
            log_w = log_w.to(z.dtype)
        if self.task == "regression":
            return (log_w.exp() * z).sum(dim=-1)
        if self.task == "binary":
            # log p(1) - log p(0) of the mixed probability, in log space (exact where a head
            # is confident beyond float32's 1 - 1e-7), both classes in one logsigmoid
            ones, zeros = _log_sum_exp(F.logsigmoid(torch.stack([z, -z])) + log_w).unbind(0)
            return ones - zeros
        return _log_sum_exp(z.log_softmax(dim=1) + log_w)

    def observe(self, loss_sums: torch.Tensor, samples: int) -> None:
        """Fold one applied step in: ``loss_sums[k]`` the sample-weighted loss sum of head
        ``k`` over the step's ``samples`` (this rank's; summed over ranks by ``loss_sync``)."""
        # detached sums into a buffer: nothing here records a graph, no no_grad() needed
        sums = loss_sums.detach() if loss_sums.requires_grad else loss_sums
        if sums.dtype != self.losses.dtype:
            sums = sums.to(self.losses.dtype)
        if self.loss_sync is not None:
            sums = self.loss_sync(sums)
        # only applied steps come here: the guard has seen their summed head losses finite
        self.losses.mul_(self.discount ** max(samples, 0)).add_(sums)


def _log_sum_exp(values: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last (heads) dimension; one ``logaddexp`` kernel for two heads,
    a third of ``torch.logsumexp``'s cost in a batch-1 step."""
    if values.shape[-1] == 2:
        first, second = values.unbind(-1)  # one call; indexing with ``...`` is two, slower
        return torch.logaddexp(first, second)
    return torch.logsumexp(values, dim=-1)


def find_mixer(model: nn.Module) -> HedgeMixer | None:
    """The model's head mixer, if it has one (``auto``)."""
    found = [module for module in model.modules() if isinstance(module, HedgeMixer)]
    if len(found) > 1:
        raise ValueError(f"the model holds {len(found)} HedgeMixer layers; at most one is allowed")
    return found[0] if found else None
