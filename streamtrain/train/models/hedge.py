"""Combining a model's heads online: Hedge over their exponentially discounted prequential loss.

A model with several heads (``auto``: a linear head and an MLP head) ends in a
:class:`HedgeMixer`. Every head is trained on its own loss each step; the mixer keeps each
head's loss on the samples it has predicted *before* learning from them, discounted by
``1 - 1/window`` per sample, and weighs head ``k`` by ``softmax(-eta * loss)_k`` (Hedge,
Freund & Schapire 1997, with the discount of a sliding window so the weights can move back
when the stream drifts). The loss the mix counts is ``criterion``: a classification head's
wrong predictions (``error``, what ``auto`` uses) or the task loss it trains on (``task``,
always for regression). Classification mixes the heads' probabilities: binary as
``logit(sum_k w_k sigmoid(z_k))`` (clamped to ``[_P_EPS, 1 - _P_EPS]``, so a logit is
finite, at most ~16 in size), multiclass in log space (the returned logits are the log of the
mixed probabilities); regression mixes their standardised values. The discounted losses are
buffers: snapshots carry the mix to the servers and checkpoints restore it.

The mix is computed without a graph: the heads learn from their own losses, never through it.
The learner (:mod:`streamtrain.train.objective`) takes what the mixer saw (:class:`HeadsSeen`:
the heads with their graph, the stacked heads, and the sigmoid or log-softmax the mix already
computed, which the heads' loss reuses), computes the per-head losses, and calls
:meth:`HedgeMixer.observe` after each applied step; on a distributed rank ``loss_sync`` (set by
:func:`streamtrain.distributed.step_sync.attach_loss_sync`) all-reduces the loss sums first,
so every rank moves the weights identically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import nn

from streamtrain.sample.spec import SampleSpec
from streamtrain.train.models._capture import CapturesInput

# per-head sums of sample-weighted losses -> the same sums over every rank's batch
LossSync = Callable[[torch.Tensor], torch.Tensor]

# error: a classification head's loss for the mix is its wrong predictions (0 or 1 per
# sample); task: the task loss it trains on. Regression always uses the task loss.
Criterion = Literal["error", "task"]

# the binary mix's probability is kept inside [eps, 1 - eps] before its logit: 1 - p rounds to
# 0 in float32 once p is within 6e-8 of 1, and a logit must stay finite (the guard refuses a
# step whose reported loss is not)
_P_EPS = 1e-7


class HeadsSeen(NamedTuple):
    """What the mixer saw in one training forward, for the heads' losses (objective.py)."""

    heads: tuple[torch.Tensor, ...]  # each head's output ``[n, width]``, with its graph
    # classification: ``[n, heads]`` (binary) or ``[n, classes, heads]``, no graph;
    # regression: ``[n, width, heads]`` with the graph (its loss goes through autograd)
    stacked: torch.Tensor
    # sigmoid (binary) or log_softmax over classes (multiclass) of ``stacked``; None otherwise
    activated: torch.Tensor | None
    # the first head's input ``[n, features]`` when that head is linear and has no graph: the
    # learner writes its gradient in closed form (train/wide_head.py); None otherwise
    features: torch.Tensor | None = None


class HedgeMixer(nn.Module, CapturesInput):
    """Mix the heads' outputs, each ``[n, width]``, into the task's output by Hedge weights:
    binary logits ``[n]``, multiclass ``[n, classes]``, regression ``[n, width]``.

    >>> spec = SampleSpec(feature_shape=(2,), task="binary")
    >>> mixer = HedgeMixer(2, spec, eta=1.0, window=1000)
    >>> mixer.weights().tolist()
    [0.5, 0.5]
    >>> mixed = mixer(torch.tensor([[2.0]]), torch.tensor([[-2.0]]))  # sigmoid: 0.88, 0.12
    >>> mixed.shape, round(mixed.sigmoid().item(), 6)  # binary logits [n]; p = the mean
    (torch.Size([1]), 0.5)
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
        # (losses tensor, its version, log form?, weights) in one attribute, so threads serving
        # at once read a tuple that belongs together; holding the tensor keeps its address from
        # being reused by another
        self._kept: tuple[torch.Tensor, int, bool, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (
            f"heads={self.losses.numel()}, task={self.task}, eta={self.eta}, "
            f"criterion={self.criterion}"
        )

    def log_weights(self) -> torch.Tensor:
        """``log softmax(-eta * losses)``, kept while the losses are unchanged (multiclass and
        regression mix with it; a served model reads it on every request)."""
        return self._kept_weights(log=True)

    def weights(self) -> torch.Tensor:
        """``softmax(-eta * losses)``, kept while the losses are unchanged (the binary mix)."""
        return self._kept_weights(log=False)

    def _kept_weights(self, *, log: bool) -> torch.Tensor:
        losses = self.losses
        kept = self._kept
        # a kept tensor is never an inference tensor (below), so its version can be read
        if kept is not None and kept[0] is losses and kept[2] is log and kept[1] == losses._version:
            return kept[3]
        if losses.is_inference() or torch.is_inference_mode_enabled():
            # an inference tensor keeps no version counter, and one made now must not be
            # kept for a later step that records a graph
            return _hedge_weights(losses, self.eta, log)
        value = _hedge_weights(losses, self.eta, log)
        # object.__setattr__: nn.Module's looks for parameters and modules first (once a step)
        object.__setattr__(self, "_kept", (losses, losses._version, log, value))
        return value

    def forward(self, *heads: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """``features``: the first head's input, when that head is linear and has no graph."""
        if self.task == "regression":
            z = torch.stack(heads, dim=-1)
            # the heads' loss goes through the stack (or, with features, the MLP head's alone)
            self.keep_input(HeadsSeen(heads, z, None, features))
            w = self.weights()
            if w.dtype != z.dtype:
                w = w.to(z.dtype)
            # never through the mix (auto's closed-form forward has no graph to cut)
            return ((z.detach() if z.requires_grad else z) * w).sum(dim=-1)
        # no graph: the heads learn from their own losses (objective.py), never through the
        # mix; auto's forward may have turned the graph off already (one context, not two)
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._mix(heads, features)
        return self._mix(heads, features)

    def _mix(self, heads: tuple[torch.Tensor, ...], features: torch.Tensor | None) -> torch.Tensor:
        """Classification's mix, without a graph (see :meth:`forward`)."""
        if self.task == "binary":
            z = torch.cat(heads, dim=1)  # [n, heads]
            activated = z.sigmoid()  # the heads' loss reuses it for its gradient
            w = self.weights()
            if w.dtype != z.dtype:
                w = w.to(z.dtype)
            # the mixed probability in one matrix-vector product; a logit again for the
            # output convention (one kernel where the log-space form took seven)
            out = torch.logit(torch.mv(activated, w), eps=_P_EPS)
        else:
            z = torch.stack(heads, dim=-1)  # [n, classes, heads]
            activated = z.log_softmax(dim=1)  # the heads' loss reuses it
            log_w = self.log_weights()
            if log_w.dtype != z.dtype:
                log_w = log_w.to(z.dtype)
            out = _log_sum_exp(activated + log_w)
        self.keep_input(HeadsSeen(heads, z, activated, features))
        return out

    def observe(self, loss_sums: torch.Tensor, samples: int) -> None:
        """Fold one applied step in: ``loss_sums[k]`` the sample-weighted loss sum of head
        ``k`` over the step's ``samples`` (this rank's; summed over ranks by ``loss_sync``)."""
        # detached sums into a buffer: nothing here records a graph, no no_grad() needed
        sums = loss_sums.detach() if loss_sums.requires_grad else loss_sums
        losses = self.losses  # a buffer: one lookup through nn.Module.__getattr__, not three
        if sums.dtype != losses.dtype:
            sums = sums.to(losses.dtype)
        if self.loss_sync is not None:
            sums = self.loss_sync(sums)
        # only applied steps come here: the guard has seen their summed head losses finite;
        # sums + discount * losses in one kernel, in place
        torch.add(sums, losses, alpha=self.discount ** max(samples, 0), out=losses)


def _hedge_weights(losses: torch.Tensor, eta: float, log: bool) -> torch.Tensor:
    scaled = -eta * losses
    return torch.log_softmax(scaled, dim=0) if log else torch.softmax(scaled, dim=0)


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
