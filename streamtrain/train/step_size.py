"""How many samples one optimizer step covers: the fetched batch is not the step.

A live stream at a few hundred samples/s arrives in batches of a few samples, a backlog in
batches of ``ingest.max_batch_size``; one step per fetched batch makes the same data learn
very differently depending on how fast it arrived. ``optimizer.step_samples`` decides:

- ``"batch"``: one step per fetched batch, whatever its size.
- an integer ``k``: a fetched batch is split into steps of at most ``k`` samples.
- ``"auto"`` (the default): the ``s``-th optimizer step covers at most ``2 ** (s / 256)``
  samples (rounded down), so a stream starts with one step per sample, when every sample
  moves the model most, and the step doubles every 256 steps. Draining a backlog, each step
  then covers about 1/370 of the samples learned so far (16 samples after ~5,500, 256 after
  ~94,000): the backlog costs ~2,000 small steps once, then drains at full batch size. A live
  stream whose batches are smaller than that limit steps once per batch, as before. Measured
  in ``bench/README.md`` (Peers).

The rule reads only the count of applied steps, which the LR schedule carries and checkpoints
restore, so a resumed trainer splits its batches exactly as the run it replaces.

Under ``"auto"`` the learning rate grows with the step (:func:`step_lr_scale`): a step of ``m``
samples is taken at ``sqrt(m)`` times the scheduled rate (Adam's square-root scaling rule,
Malladi et al., 2022), and a plain-SGD linear head's at ``m`` times it, which makes its step
the sum of the ``m`` per-sample gradients, as ``m`` single steps would move it (Goyal et al.,
2017); ``m`` counts up to :data:`LR_SCALE_MAX_SAMPLES`. Without it, a stream fetched in
batches of 16 learned an abrupt drift up to 0.032 accuracy slower than one fetched sample by
sample, as the steps grew (bench/README.md, Peers).

>>> [max_step_samples("auto", s) for s in (0, 255, 256, 1024)], max_step_samples("batch", 5)
([1, 1, 2, 16], None)
"""

from __future__ import annotations

import math
from typing import Literal

StepSamples = int | Literal["auto", "batch"]

# applied steps over which the "auto" step size doubles; it never exceeds 2**AUTO_MAX_DOUBLINGS
AUTO_DOUBLING_STEPS = 256
AUTO_MAX_DOUBLINGS = 20

# a step's samples count toward its learning-rate scale up to this many: the largest step the
# scale was measured at (batch 16), and a summed SGD step of 16 standardised samples stays
# well inside a squared loss's stability bound at the default rate 0.01
LR_SCALE_MAX_SAMPLES = 16

ScaleRule = Literal["sqrt", "sum"]


def max_step_samples(rule: StepSamples, steps_taken: int) -> int | None:
    """The most samples the next step may cover; None means the whole fetched batch."""
    if rule == "batch":
        return None
    if rule == "auto":
        return int(2.0 ** min(steps_taken / AUTO_DOUBLING_STEPS, AUTO_MAX_DOUBLINGS))
    if isinstance(rule, int) and rule >= 1:
        return rule
    raise ValueError(f"step_samples must be 'auto', 'batch' or an integer >= 1, got {rule!r}")


def step_lr_scale(rule: ScaleRule, samples: int) -> float:
    """The multiplier of the scheduled learning rate for a step of ``samples`` under the
    ``"auto"`` step rule: ``sqrt(m)`` or ``m``, with ``m`` the samples up to
    :data:`LR_SCALE_MAX_SAMPLES` (at least 1).

    >>> step_lr_scale("sqrt", 1), step_lr_scale("sqrt", 4), step_lr_scale("sum", 4)
    (1.0, 2.0, 4.0)
    >>> step_lr_scale("sqrt", 256), step_lr_scale("sum", 256)
    (4.0, 16.0)
    """
    m = float(min(max(samples, 1), LR_SCALE_MAX_SAMPLES))
    if rule == "sqrt":
        return math.sqrt(m)
    if rule == "sum":
        return m
    raise ValueError(f"unknown learning-rate scale rule {rule!r}; use sqrt or sum")
